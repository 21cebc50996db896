// The Falco rules (k8s/falco/bulwark-rules.yaml): the structure Falco's loader expects, the
// four detections the deployment relies on, conditions that only name macros and lists that
// exist (here or in Falco's default rules), and lists that agree with the deployment: the
// writable folders and key folders of each overlay's bulwark.yaml, the JWKS egress of the
// NetworkPolicy.
import t from 'tap'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parse, parseAllDocuments } from 'yaml'
import { buildConfig } from '../../src/config/load.ts'
import { repoRoot } from '../../kit/paths.ts'

type Item = Record<string, unknown>
const items = parse(readFileSync(path.join(repoRoot, 'k8s/falco/bulwark-rules.yaml'), 'utf8')) as Item[]
const configs = ['sidecar', 'gateway'].map((o) => buildConfig(parse(readFileSync(path.join(repoRoot, `k8s/overlays/${o}/bulwark.yaml`), 'utf8')), `k8s/overlays/${o}/bulwark.yaml`))

const PRIORITIES = ['EMERGENCY', 'ALERT', 'CRITICAL', 'ERROR', 'WARNING', 'NOTICE', 'INFORMATIONAL', 'INFO', 'DEBUG']
/** Macros and lists of Falco's default rules (falco_rules.yaml) that these rules use. */
const FALCO_DEFAULTS = new Set(['spawned_process', 'container', 'open_write', 'open_read', 'outbound', 'shell_binaries', 'shell_procs'])
/** Field classes a condition or output may use. */
const FIELD_CLASSES = ['evt', 'proc', 'fd', 'user', 'group', 'container', 'k8s', 'fs']
const OPERATORS = new Set(['and', 'or', 'not', 'in', 'pmatch', 'startswith', 'endswith', 'contains', 'icontains', 'glob', 'exists', 'intersects'])

const rules = items.filter((i) => 'rule' in i)
const macros = new Map(items.filter((i) => 'macro' in i).map((i) => [i.macro as string, i]))
const lists = new Map(items.filter((i) => 'list' in i).map((i) => [i.list as string, i]))

t.test('every item is a rule, macro, list or engine version, with the fields Falco requires', async (t) => {
  t.equal(parseAllDocuments(readFileSync(path.join(repoRoot, 'k8s/falco/bulwark-rules.yaml'), 'utf8')).length, 1, 'one YAML document: a list')
  t.ok(Array.isArray(items))
  for (const item of items) {
    const kinds = ['rule', 'macro', 'list', 'required_engine_version'].filter((k) => k in item)
    t.equal(kinds.length, 1, `one kind per item: ${JSON.stringify(Object.keys(item))}`)
    if ('rule' in item) {
      for (const f of ['desc', 'condition', 'output', 'priority']) t.type(item[f], 'string', `${String(item.rule)}: ${f}`)
      t.ok(PRIORITIES.includes(String(item.priority)), `${String(item.rule)}: priority ${String(item.priority)}`)
      t.ok(Array.isArray(item.tags) && (item.tags as string[]).includes('bulwark'), `${String(item.rule)}: tagged bulwark`)
      t.same(Object.keys(item).filter((k) => !['rule', 'desc', 'condition', 'output', 'priority', 'tags', 'enabled', 'exceptions', 'source'].includes(k)), [], `${String(item.rule)}: no unknown keys`)
    }
    if ('macro' in item) t.type(item.condition, 'string', `${String(item.macro)}: condition`)
    if ('list' in item) t.ok(Array.isArray(item.items) && (item.items as unknown[]).length > 0, `${String(item.list)}: items`)
  }
  t.equal(new Set(rules.map((r) => r.rule)).size, rules.length, 'rule names are unique')
})

t.test('conditions parse: balanced, and every name is a field, an operator, or a known macro or list', async (t) => {
  const conditions = [...rules.map((r) => [`rule ${String(r.rule)}`, String(r.condition)]), ...[...macros].map(([n, m]) => [`macro ${n}`, String(m.condition)])]
  for (const [where, condition] of conditions) {
    const stripped = condition!.replace(/"[^"]*"/g, '""')
    let depth = 0
    for (const ch of stripped) {
      depth += ch === '(' ? 1 : ch === ')' ? -1 : 0
      if (depth < 0) break
    }
    t.equal(depth, 0, `${where}: parentheses balance`)
    const words = stripped.replace(/\/[^\s,()]*/g, ' ').match(/[A-Za-z_][A-Za-z0-9_.]*/g) ?? []
    for (const w of words) {
      const known = OPERATORS.has(w) || FIELD_CLASSES.some((c) => w.startsWith(`${c}.`)) || macros.has(w) || lists.has(w) || FALCO_DEFAULTS.has(w)
      t.ok(known, `${where}: ${w} is known`)
    }
  }
  for (const r of rules) {
    for (const field of String(r.output).match(/%[a-z0-9_.]+/g) ?? []) t.ok(FIELD_CLASSES.some((c) => field.startsWith(`%${c}.`)), `${String(r.rule)}: output field ${field}`)
  }
})

t.test('the four detections the deployment relies on, scoped to the Bulwark container', async (t) => {
  const rule = (re: RegExp) => rules.find((r) => re.test(String(r.rule)))
  const shell = rule(/shell/i)
  t.match(shell?.condition, /spawned_process/, 'a shell spawned')
  t.match(shell?.condition, /shell_binaries/)
  const egress = rule(/outbound/i)
  t.match(egress?.condition, /outbound[\s\S]*not fd\.snet in \(bulwark_allowed_networks\)/, 'an outbound connection to an address not allowed')
  const write = rule(/write/i)
  t.match(write?.condition, /open_write[\s\S]*not bulwark_writable_path/, 'a write outside the audit and state paths')
  const keys = rule(/key/i)
  t.match(keys?.condition, /open_read[\s\S]*bulwark_key_path[\s\S]*not proc\.name in \(bulwark_gateway_binaries\)/, 'a read of the signing keys by another process')
  for (const r of [shell, egress, write, keys]) t.match(r?.condition, /bulwark_container/, `${String(r?.rule)}: only the Bulwark container`)
  t.match(macros.get('bulwark_container')?.condition, /container\.name = "bulwark"/)
})

t.test('the lists agree with the deployment', async (t) => {
  const items = (name: string) => (lists.get(name)?.items as string[]) ?? []
  for (const config of configs) {
    t.same(items('bulwark_writable_dirs').sort(), [config.audit.directory, config.state.directory].sort(), 'writable: the audit and state folders of bulwark.yaml')
    // tls.caFile sits in the csi-driver-spiffe volume, next to the pod's SVID key.
    const keyDirs = [config.tls.keyFile, config.tls.caFile, config.audit.checkpoint.signingKeyFile, config.models.signingPublicKeyFile!].map((f) => path.dirname(f))
    t.same(items('bulwark_key_dirs').sort(), [...new Set(keyDirs)].sort(), 'keys: the folders of the TLS key, the SVID key, the audit key and the model-signing key')
  }
  const netpol = readFileSync(path.join(repoRoot, 'k8s/base/networkpolicy.yaml'), 'utf8')
  const jwksCidr = /cidr: (\S+)/.exec(netpol)![1]!
  t.ok(items('bulwark_allowed_networks').includes(`"${jwksCidr}"`), `allowed networks include the JWKS egress ${jwksCidr}`)
  for (const cidr of items('bulwark_allowed_networks')) t.match(cidr, /^"[0-9a-f.:]+\/\d{1,3}"$/, `${cidr} is a quoted CIDR`)
  t.same(items('bulwark_gateway_binaries'), ['node'], 'the gateway process is node')
})
