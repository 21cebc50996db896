// SPIFFE IDs held to the SPIFFE-ID standard (section 2), rule by rule: each invalid ID is
// refused with a reason that names the rule it breaks, and the valid ones pass. A workload's
// ID must also have a path (X.509-SVID 3.1).

import t from 'tap'
import { spiffeIdProblem, workloadSpiffeIdProblem } from '../../src/auth/spiffe-id.ts'

const valid = [
  'spiffe://bulwark.local/ns/default/sa/dev',
  'spiffe://example.org/9eebccd2-12bf-40a6-b262-65fe0487d453',
  'spiffe://td_1-a.b/A.b_c-D/..x/x../.x/x.',
  'spiffe://1.2.3.4/workload',
  `spiffe://${'a'.repeat(255)}/x`,
  `spiffe://td/${'a'.repeat(2048 - 'spiffe://td/'.length)}`,
]

const invalid: [id: string, rule: RegExp][] = [
  ['spiffe://bulwark.local/ns/default/../../ns/evil/sa/x', /dot segment \(\.\.\)/],
  ['spiffe://td/ns/./sa/x', /dot segment \(\.\)/],
  ['spiffe://td/..', /dot segment \(\.\.\)/],
  ['spiffe://td/ns//sa', /empty segment/],
  ['spiffe://td/ns/', /ends with a slash/],
  ['spiffe://td/', /ends with a slash/],
  ['spiffe://td/ns/a%2F..', /percent-encoded/],
  ['spiffe://td/ns/a b', /character " "/],
  ['spiffe://td/ns/caf\u00e9', /character "é"/],
  ['spiffe://td/ns\\a', /character "\\\\"/],
  ['spiffe://td/ns/a?x=1', /query/],
  ['spiffe://td/ns/a#frag', /fragment/],
  ['spiffe://TD/ns/a', /trust domain has uppercase/],
  ['spiffe://user@td/ns/a', /userinfo/],
  ['spiffe://td:8443/ns/a', /port/],
  ['spiffe://t%64/ns/a', /trust domain is percent-encoded/],
  ['spiffe://td!/ns/a', /trust domain has the character "!"/],
  ['spiffe://[::1]/ns/a', /IPv6 literal/],
  ['spiffe:///ns/a', /trust domain is empty/],
  ['spiffe://', /trust domain is empty/],
  [`spiffe://${'a'.repeat(256)}/x`, /trust domain is 256 bytes; the limit is 255/],
  [`spiffe://td/${'a'.repeat(2049 - 'spiffe://td/'.length)}`, /2049 bytes; the limit is 2048/],
  ['SPIFFE://td/ns/a', /scheme is not lowercase/],
  ['spiffe:td/ns/a', /does not start with spiffe:\/\//],
  ['https://td/ns/a', /does not start with spiffe:\/\//],
  ['', /does not start with spiffe:\/\//],
]

t.test('IDs the standard allows pass', async (t) => {
  for (const id of valid) t.equal(spiffeIdProblem(id), null, id.slice(0, 60))
})

t.test('IDs the standard forbids are refused, naming the rule', async (t) => {
  for (const [id, rule] of invalid) t.match(spiffeIdProblem(id), rule, id.slice(0, 60))
})

t.test('a workload\'s ID needs a path; a trust domain alone names its authority', async (t) => {
  t.equal(spiffeIdProblem('spiffe://td'), null, 'a valid SPIFFE ID (of the trust domain)')
  t.match(workloadSpiffeIdProblem('spiffe://td'), /names a trust domain only/)
  t.equal(workloadSpiffeIdProblem('spiffe://td/ns/a'), null)
  t.match(workloadSpiffeIdProblem('spiffe://td/ns/../a'), /dot segment/, 'and every rule of a SPIFFE ID still applies')
})
