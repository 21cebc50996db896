// `bulwark bench`'s flags: each bad flag is refused with exit status 2 and a message that
// names it and says what it takes, all problems at once; level lists and ranges expand as
// documented (and a gRPC target's HOST:PORT); a target off loopback is refused (before any connection) unless
// --allow-target names its host exactly; the real CLI dispatches `bench` and prints --help.

import t from 'tap'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from '../../kit/paths.ts'
import { realDeps } from '../../src/deps.ts'
import { benchCommand } from '../../src/loadtest/command.ts'
import { parseBenchArgs, parseDuration, parseLevels } from '../../src/loadtest/options.ts'

async function bench(argv: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = ''
  let stderr = ''
  const status = await benchCommand(argv, { cwd: repoRoot, out: (s) => (stdout += s), err: (s) => (stderr += s), errIsTTY: false, deps: realDeps })
  return { status, stdout, stderr }
}

t.test('bad flags: exit 2, the flag named, what it takes', async (t) => {
  const cases: [string, string[], RegExp][] = [
    ['an unknown flag', ['--model', 'm', '--concurency', '4'], /Unknown option '--concurency'/],
    ['no model', ['--concurrency', '4'], /--model NAME is required/],
    ['a zero concurrency', ['--model', 'm', '--concurrency', '0,4'], /--concurrency takes a list \(1,4,16,64\) or a range START:END:STEP.*got "0,4"/],
    ['a backwards range', ['--model', 'm', '--concurrency', '64:1:x2'], /--concurrency takes a list.*got "64:1:x2"/],
    ['a multiplier that does not grow', ['--model', 'm', '--rate', '1:64:x1'], /--rate takes a list.*got "1:64:x1"/],
    ['both loops', ['--model', 'm', '--concurrency', '4', '--rate', '100'], /--concurrency \(closed loop\) and --rate \(open loop\) exclude each other/],
    ['a duration without unit', ['--model', 'm', '--duration', '5'], /--duration takes a duration with its unit.*500ms, 5s, 2m; got "5"/],
    ['a fixed duration and a window', ['--model', 'm', '--duration', '1s', '--window', '1s'], /--duration measures each step for a fixed time; --window/],
    ['a certificate without key', ['--model', 'm', '--cert', 'c.pem'], /--cert and --key go together/],
    ['two token sources', ['--model', 'm', '--token', 'x', '--token-file', 'f'], /exclude each other; got --token and --token-file/],
    ['a report that is not HTML', ['--model', 'm', '--report', 'r.pdf'], /--report writes one HTML file; name it FILE\.html/],
    ['a URL that is not http', ['--model', 'm', '--url', 'ftp://127.0.0.1/'], /--url takes an http:\/\/ or https:\/\/ URL/],
    ['an unknown protocol', ['--model', 'm', '--protocol', 'http3'], /--protocol takes rest or grpc; got "http3"/],
    ['a gRPC target with a path', ['--model', 'm', '--protocol', 'grpc', '--url', '127.0.0.1:8444/v2'], /--url with --protocol grpc takes the gRPC listener's HOST:PORT, e.g\. 127\.0\.0\.1:8444/],
    ['no callers', ['--model', 'm', '--callers', '0'], /--callers takes a whole number from 1 to 10000; got "0"/],
    ['several callers, one token', ['--model', 'm', '--token', 'x', '--callers', '4'], /--callers N spreads the load over N identities, and --token gives one/],
    ['connections in a closed loop', ['--model', 'm', '--connections', '4'], /--connections applies to --rate \(open loop\) only/],
    ['a batch of zero', ['--model', 'm', '--batch', '0'], /--batch takes a whole number from 1 to 65536; got "0"/],
    ['a backwards range of values', ['--model', 'm', '--range', '1:0'], /--range takes LOW:HIGH/],
  ]
  for (const [what, argv, message] of cases) {
    const r = await bench(argv)
    t.equal(r.status, 2, `${what}: exit 2`)
    t.match(r.stderr, message, `${what}: the message`)
    t.match(r.stderr, /bulwark bench --help lists every flag/, `${what}: where to look`)
    t.equal(r.stdout, '', `${what}: nothing on stdout`)
  }
  const many = await bench(['--concurrency', 'x', '--warmup', 'soon'])
  for (const problem of [/--model NAME is required/, /--warmup takes a duration/, /--concurrency takes a list/]) t.match(many.stderr, problem, 'every problem at once')
})

t.test('levels: lists, doubling and adding ranges; durations with units', async (t) => {
  t.same(parseLevels('1,4,16,64', '--concurrency', 4096), [1, 4, 16, 64])
  t.same(parseLevels('1:64:x2', '--concurrency', 4096), [1, 2, 4, 8, 16, 32, 64])
  t.same(parseLevels('8:32:8', '--concurrency', 4096), [8, 16, 24, 32])
  t.same(parseLevels('200:800:x2', '--rate', 1e6), [200, 400, 800])
  t.same(parseLevels('3:5', '--rate', 1e6), [3, 4, 5], 'step 1 by default')
  t.match(parseLevels('1:100000:1', '--rate', 1e6), /at most 32 per run/)
  t.same([parseDuration('500ms'), parseDuration('5s'), parseDuration('1.5s'), parseDuration('2m'), parseDuration('5')], [500, 5000, 1500, 120_000, null])
  const o = parseBenchArgs(['--model', 'mnist', '--rate', '200,400'])
  t.same(o.mode, { kind: 'open', levels: [200, 400], connections: 16 })
  t.equal(o.durationMs, undefined, 'no --duration: measure until stable')
  t.ok(o.maxDurationMs > 0 && o.maxRequests > 0, 'always bounded in time and count')
  const grpc = (url?: string) => parseBenchArgs(['--model', 'mnist', '--protocol', 'grpc', ...(url ? ['--url', url] : [])]).url.href
  t.equal(grpc(), 'https://127.0.0.1:8444/', 'gRPC: npm start\'s listener by default, over TLS')
  t.equal(grpc('localhost:9000'), 'https://localhost:9000/', 'HOST:PORT is TLS')
  t.equal(grpc('[::1]:9000'), 'https://[::1]:9000/')
  t.equal(grpc('http://127.0.0.1:9000'), 'http://127.0.0.1:9000/', 'http:// for a listener without TLS')
})

t.test('a target off loopback is refused unless --allow-target names its host', async (t) => {
  const far = await bench(['--model', 'mnist', '--url', 'https://gateway.example.com:8443'])
  t.equal(far.status, 1)
  t.match(far.stderr, /refusing to load --url https:\/\/gateway\.example\.com:8443: it is not a loopback address\. To load-test that host on purpose, add --allow-target gateway\.example\.com/)
  const other = await bench(['--model', 'mnist', '--url', 'https://gateway.example.com:8443', '--allow-target', 'example.com'])
  t.equal(other.status, 1, 'a different host does not count')
  t.match(other.stderr, /--allow-target names "example\.com", not this host/)
  const metrics = await bench(['--model', 'mnist', '--url', 'https://127.0.0.1:1', '--metrics', 'http://10.0.0.8:9464/metrics'])
  t.equal(metrics.status, 1, 'the metrics URL is held to the same rule')
  t.match(metrics.stderr, /refusing to load --metrics http:\/\/10\.0\.0\.8:9464/)
  const closed = await bench(['--model', 'mnist', '--url', 'https://127.0.0.1:1', '--cacert', path.join(repoRoot, 'package.json'), '--token', 'x'])
  t.equal(closed.status, 1, 'loopback passes the check; a port with nothing listening fails clearly')
  t.match(closed.stderr, /cannot reach https:\/\/127\.0\.0\.1:1: ECONNREFUSED/)
})

t.test('the CLI dispatches bench: --help on stdout, a bad flag exits 2', async (t) => {
  const run = promisify(execFile)
  const cli = (...args: string[]) => run(process.execPath, [path.join(repoRoot, 'bin', 'bulwark.js'), ...args], { cwd: repoRoot })
  const help = await cli('bench', '--help')
  t.match(help.stdout, /^usage: bulwark bench --model NAME/)
  t.match(help.stdout, /--allow-target HOST/)
  const top = await cli('help')
  t.match(top.stdout, /bench --model NAME/, 'the command list names bench')
  const bad = await cli('bench', '--model', 'mnist', '--rate', 'fast').then(() => null, (e: { code: number; stderr: string }) => e)
  t.equal(bad?.code, 2)
  t.match(bad?.stderr ?? '', /--rate takes a list/)
})
