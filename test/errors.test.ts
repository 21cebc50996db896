// Every error code is documented in docs/errors.md with the HTTP status and the gRPC status
// the code tables give, and the docs list no code that does not exist (as fastify's errors
// test does).
import t from 'tap'
import { readFileSync } from 'node:fs'
import { BulwarkError, errorBody, errorCodes, errorGrpcStatus, errorStatus } from '../src/errors.ts'

const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8')
const rows = new Map<string, number>()
const grpcRows = new Map<string, string>()
for (const m of doc.matchAll(/^\| `([a-z_]+)` \| (\d{3}) \| `([A-Z_]+)` \|/gm)) {
  rows.set(m[1]!, Number(m[2]))
  grpcRows.set(m[1]!, m[3]!)
}

t.test('every code is documented with its status', async (t) => {
  for (const code of errorCodes) {
    t.equal(rows.get(code), errorStatus[code], `${code} documented as ${errorStatus[code]}`)
  }
})

t.test('every code is documented with its gRPC status', async (t) => {
  for (const code of errorCodes) {
    t.equal(grpcRows.get(code), errorGrpcStatus[code], `${code} documented as ${errorGrpcStatus[code]}`)
  }
})

t.test('the docs name no code that does not exist', async (t) => {
  for (const code of rows.keys()) t.ok(code in errorStatus, `${code} exists in src/errors.ts`)
})

t.test('an error carries code, status, a public message and a private reason', async (t) => {
  const err = new BulwarkError('unauthenticated', 'send a valid bearer token', { reason: 'token expired 30 s ago' })
  t.equal(err.status, 401)
  t.same(errorBody(err), { error: 'send a valid bearer token', code: 'unauthenticated' })
  t.notMatch(JSON.stringify(errorBody(err)), /expired/, 'the reason never reaches the body')
})
