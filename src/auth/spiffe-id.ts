// SPIFFE IDs as the SPIFFE-ID standard (section 2) defines them, and the stricter rule the
// X.509-SVID standard (section 3.1) adds for the certificate a workload presents. Used on both
// sides of a policy decision: on the URI SAN of a client certificate (mtls-identity) and on the
// workload patterns of the policies (src/config/policy.ts), so that neither can hold an ID that
// a prefix rule would misread: `spiffe://td/ns/default/../../ns/evil/sa/x` starts with
// `spiffe://td/ns/default/` but names something else to anyone who resolves dot segments.
//
// The rules, each reported by name:
//   scheme        exactly `spiffe://` (the canonical lowercase form; IDs are compared as strings)
//   trust domain  not empty, at most 255 bytes, only [a-z0-9._-]: so no userinfo (@), no
//                 port (:), no uppercase, no percent-encoding
//   path          empty, or segments of [A-Za-z0-9._-] with none empty (//), none `.` or `..`,
//                 and no trailing slash; no percent-encoding, query (?) or fragment (#)
//   length        at most 2048 bytes in all (section 2.3)

export const SPIFFE_ID_MAX_BYTES = 2048
export const TRUST_DOMAIN_MAX_BYTES = 255
const SCHEME = 'spiffe://'

const TRUST_DOMAIN_CHAR = /^[a-z0-9._-]$/
const PATH_CHAR = /^[A-Za-z0-9._-]$/

/** The first character of `s` outside `allowed`, or null. */
function badChar(s: string, allowed: RegExp): string | null {
  for (const ch of s) if (!allowed.test(ch)) return ch
  return null
}

const show = (ch: string) => JSON.stringify(ch)

/** Why the trust domain breaks the standard, or null. */
function trustDomainProblem(td: string): string | null {
  if (td.length === 0) return 'the trust domain is empty'
  if (td.startsWith('[')) return 'the trust domain is an IPv6 literal, which the standard excludes'
  if (td.includes('@')) return 'the authority has a userinfo part (@); a trust domain is a bare name'
  if (td.includes(':')) return 'the authority has a port (:); a trust domain is a bare name'
  if (td.includes('%')) return 'the trust domain is percent-encoded'
  if (td.length > TRUST_DOMAIN_MAX_BYTES) return `the trust domain is ${td.length} bytes; the limit is ${TRUST_DOMAIN_MAX_BYTES}`
  const ch = badChar(td, TRUST_DOMAIN_CHAR)
  if (ch === null) return null
  return /[A-Z]/.test(ch) ? 'the trust domain has uppercase letters; it must be lowercase' : `the trust domain has the character ${show(ch)}; only [a-z0-9._-] are allowed`
}

/** Why the path (empty, or starting with '/') breaks the standard, or null. */
function pathProblem(path: string): string | null {
  if (path.length === 0) return null
  if (path.endsWith('/')) return 'the path ends with a slash'
  for (const segment of path.slice(1).split('/')) {
    if (segment.length === 0) return 'the path has an empty segment (//)'
    if (segment === '.' || segment === '..') return `the path has a dot segment (${segment})`
    if (segment.includes('%')) return 'the path is percent-encoded'
    const ch = badChar(segment, PATH_CHAR)
    if (ch !== null) return `the path has the character ${show(ch)}; only [A-Za-z0-9._-] are allowed`
  }
  return null
}

/** Why `id` is not a SPIFFE ID (operator-facing: names the rule it breaks), or null when it is one. */
export function spiffeIdProblem(id: string): string | null {
  // Checked first so that no other rule looks at more than the limit.
  const bytes = Buffer.byteLength(id)
  if (bytes > SPIFFE_ID_MAX_BYTES) return `it is ${bytes} bytes; the limit is ${SPIFFE_ID_MAX_BYTES}`
  if (!id.startsWith(SCHEME)) {
    return id.toLowerCase().startsWith(SCHEME) ? 'the scheme is not lowercase spiffe://' : 'it does not start with spiffe://'
  }
  if (id.includes('?')) return 'it has a query (?)'
  if (id.includes('#')) return 'it has a fragment (#)'
  const rest = id.slice(SCHEME.length)
  const slash = rest.indexOf('/')
  const td = slash === -1 ? rest : rest.slice(0, slash)
  return trustDomainProblem(td) ?? pathProblem(slash === -1 ? '' : rest.slice(slash))
}

/**
 * Why `id` cannot be the SPIFFE ID of a workload's certificate, or null: a SPIFFE ID with a
 * path (an ID of the trust domain alone names its signing authority, never a workload).
 */
export function workloadSpiffeIdProblem(id: string): string | null {
  const problem = spiffeIdProblem(id)
  if (problem !== null) return problem
  return id.indexOf('/', SCHEME.length) === -1 ? 'it names a trust domain only; a workload\'s SPIFFE ID has a path (X.509-SVID 3.1)' : null
}
