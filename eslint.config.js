// `npm run lint`: eslint-plugin-security's recommended rules over the gateway's sources, as
// errors (CI fails on any finding; a finding that is a false positive is disabled in place,
// on its line, with the reason), and STYLE.md habit 7 as a rule: only src/deps.ts touches
// ambient time, timers and randomness, only src/cli.ts touches `process`. Tests, benches, model
// scripts and tooling get the rules that still matter outside the request path.

import js from '@eslint/js'
import security from 'eslint-plugin-security'
import tseslint from 'typescript-eslint'
import ts from 'typescript'

const securityAsErrors = Object.fromEntries(Object.keys(security.configs.recommended.rules).map((rule) => [rule, 'error']))

/**
 * security/detect-object-injection, with TypeScript's types: `obj[key]` is a prototype-pollution
 * or arbitrary-property risk when `key` can be any string. It is not when the key's type is a
 * number (array and typed-array indexing: most of the numeric code) or a closed union of
 * literals (`keyof typeof table`, a union of codes) that does not include __proto__,
 * constructor or prototype, so those are not reported. Everything else still is, and must be
 * fixed or justified on its line.
 */
const CLOSED_KEY = ts.TypeFlags.NumberLike | ts.TypeFlags.StringLiteral | ts.TypeFlags.EnumLike
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype'])
const objectInjection = {
  meta: { ...security.rules['detect-object-injection'].meta, docs: { description: 'security/detect-object-injection, minus numeric and closed literal-union keys' } },
  create(context) {
    const services = context.sourceCode.parserServices
    const checker = services?.program?.getTypeChecker()
    const isClosedKey = (node) => {
      if (!checker) return false
      const type = checker.getTypeAtLocation(services.esTreeNodeToTSNodeMap.get(node))
      const parts = type.isUnion() ? type.types : [type]
      return parts.every((t) => (t.flags & CLOSED_KEY) !== 0 && !(t.isStringLiteral() && FORBIDDEN_KEYS.has(t.value)))
    }
    return security.rules['detect-object-injection'].create({
      report(descriptor) {
        if (descriptor.node?.type === 'MemberExpression' && isClosedKey(descriptor.node.property)) return
        context.report(descriptor)
      },
    })
  },
}

/** Randomness from node:crypto (and Web Crypto): only deps.ts may draw it. */
const RANDOM_FUNCTIONS = ['randomBytes', 'randomUUID', 'randomInt', 'randomFill', 'randomFillSync', 'getRandomValues', 'pseudoRandomBytes', 'prng', 'rng']

const habit7 = 'STYLE.md habit 7: take time and randomness from the injected Clock and RandomSource (src/deps.ts)'
const ambientTimeAndRandomness = [
  { selector: "CallExpression[callee.object.name='Date'][callee.property.name='now']", message: `Date.now(): ${habit7}` },
  { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: `new Date() without a time: ${habit7}` },
  { selector: "CallExpression[callee.type='Identifier'][callee.name='Date']", message: `Date(): ${habit7}` },
  { selector: "MemberExpression[object.name='performance'][property.name='now']", message: `performance.now(): ${habit7}` },
  { selector: "MemberExpression[object.name='Math'][property.name='random']", message: `Math.random(): ${habit7}` },
  { selector: `MemberExpression[property.name=/^(${RANDOM_FUNCTIONS.join('|')})$/]`, message: `crypto randomness: ${habit7}` },
]
// Timers too: a timer is time, and a test of code that sets one should move a fake clock
// (kit/clock.ts) rather than wait.
const ambientTimers = [
  { selector: "CallExpression[callee.type='Identifier'][callee.name=/^(setTimeout|setInterval)$/]", message: `a global timer: ${habit7} (clock.setTimeout, clock.setInterval, clock.sleep)` },
  { selector: "CallExpression[callee.object.name='globalThis'][callee.property.name=/^(setTimeout|setInterval)$/]", message: `a global timer: ${habit7}` },
]
const timerImports = ['timers', 'node:timers', 'timers/promises', 'node:timers/promises'].map((name) => ({ name, message: `${habit7}: timers and sleeps come from the Clock` }))
const cryptoImports = ['crypto', 'node:crypto'].map((name) => ({ name, importNames: RANDOM_FUNCTIONS, message: habit7 }))
const processImports = ['process', 'node:process'].map((name) => ({ name, message: 'STYLE.md habit 7: only src/cli.ts touches the process (argv, env, exit, signals); pass what you need in' }))

export default tseslint.config(
  {
    ignores: ['node_modules/', '.bulwark/', '.tap/', 'coverage/', 'dist/', 'bench/results/', 'k8s/', 'docs/'],
  },
  {
    name: 'bulwark/parser',
    files: ['**/*.ts', '**/*.js', '**/*.mjs'],
    languageOptions: {
      parser: tseslint.parser,
      ecmaVersion: 2024,
      sourceType: 'module',
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    plugins: { security },
    rules: {
      // Correctness rules that are security rules too: no code from strings.
      'no-eval': 'error',
      'no-implied-eval': 'error',
      'no-new-func': 'error',
      'no-script-url': 'error',
      // What still matters in tests and tools: nothing hidden in the text, no eval, no unsafe buffers.
      'security/detect-bidi-characters': 'error',
      'security/detect-invisible-characters': 'error',
      'security/detect-eval-with-expression': 'error',
      'security/detect-new-buffer': 'error',
      'security/detect-buffer-noassert': 'error',
      'security/detect-pseudoRandomBytes': 'error',
    },
  },
  {
    name: 'bulwark/src: security rules',
    files: ['src/**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { bulwark: { rules: { 'object-injection': objectInjection } } },
    rules: {
      ...securityAsErrors,
      'security/detect-object-injection': 'off',
      'bulwark/object-injection': 'error',
    },
  },
  {
    // detect-non-literal-fs-filename exists to catch a file name that a caller controls. No
    // request ever names a file here: these modules exist to open the files the operator names
    // in bulwark.yaml, in a policy or on the command line (config, policies, TLS and JWKS
    // files, keys, the audit and state folders, model folders, screening calibration files,
    // the Redis password file),
    // under names built from those and constants.
    // Each file is listed on purpose; a new module gets the rule until it is added here with
    // the same argument. Request-path modules (stages, routes, protocol, inference service,
    // privacy mechanisms, screening) keep the rule.
    name: 'bulwark/src: loaders of operator-configured files',
    files: [
      'src/cli.ts',
      'src/config/load.ts',
      'src/config/policy.ts',
      'src/audit/fs.ts',
      'src/durable/fs.ts',
      'src/audit/keys.ts',
      'src/audit/verify.ts',
      'src/auth/jwks.ts',
      'src/dev/mint-token.ts',
      'src/dev/pki.ts',
      'src/privacy/file-accountant.ts',
      'src/transport/tls.ts',
      'src/inference/manifest.ts',
      'src/inference/package-dir.ts',
      'src/inference/registry.ts',
      'src/signing/model-signature.ts',
      'src/signing/commands.ts',
      'src/screening/calibrate.ts',
      'src/screening/calibration.ts',
      'src/screening/calibration-sets.ts',
      'src/state/redis.ts',
      'src/loadtest/target.ts',
      'src/loadtest/inputs.ts',
      'src/loadtest/command.ts',
      'src/cli/model-add.ts',
    ],
    rules: { 'security/detect-non-literal-fs-filename': 'off' },
  },
  {
    name: 'bulwark/src: habit 7 (no ambient time, randomness or process)',
    files: ['src/**/*.ts'],
    ignores: ['src/deps.ts', 'src/cli.ts'],
    rules: {
      'no-restricted-syntax': ['error', ...ambientTimeAndRandomness, ...ambientTimers],
      'no-restricted-globals': ['error', { name: 'process', message: processImports[0].message }],
      'no-restricted-imports': ['error', { paths: [...cryptoImports, ...processImports, ...timerImports] }],
    },
  },
  {
    // cli.ts owns the process but not the clock or the random source.
    name: 'bulwark/src/cli.ts: habit 7 (time and randomness only)',
    files: ['src/cli.ts'],
    rules: {
      'no-restricted-syntax': ['error', ...ambientTimeAndRandomness, ...ambientTimers],
      'no-restricted-imports': ['error', { paths: [...cryptoImports, ...timerImports] }],
    },
  },
  {
    // deps.ts owns time and randomness but not the process.
    name: 'bulwark/src/deps.ts: habit 7 (no process)',
    files: ['src/deps.ts'],
    rules: {
      'no-restricted-globals': ['error', { name: 'process', message: processImports[0].message }],
      'no-restricted-imports': ['error', { paths: processImports }],
    },
  },
  {
    name: 'bulwark/config files',
    files: ['eslint.config.js'],
    rules: js.configs.recommended.rules,
  },
)
