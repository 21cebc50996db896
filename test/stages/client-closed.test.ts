// A client that hangs up mid-body is not a server error. Through a real mTLS socket with a
// real token to a real gateway (the real mnist model): half a body (or none), then the
// connection is destroyed while the gateway reads the body. The body-read link refuses with
// client_closed_request (499), the log line is at info with that code and no stack, the audit
// record carries the code and the precise reason, the metrics count it as 499, and the
// gateway keeps serving. Below, readBody itself: a client abort (mid-body, or before the read
// began) becomes client_closed_request keeping Node's error as the cause; other errors stay as
// they are. Nothing here sleeps: the test waits for the gateway's own events.

import t from 'tap'
import { EventEmitter } from 'node:events'
import type { IncomingMessage } from 'node:http'
import tls from 'node:tls'
import { readFile } from 'node:fs/promises'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { isBulwarkError, type BulwarkError } from '../../src/errors.ts'
import { readBody } from '../../src/transport/read-body.ts'

const PINO_INFO = 30

t.test('half a body, then the connection destroyed: 499 client_closed_request, info log, audited, still serving', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const body = JSON.stringify(await mnistRequest())
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f, 'utf8')))
  const token = await gw.token()
  const { port } = new URL(gw.url)

  const writer = gw.gateway.audit.writer!
  /** The next audit record with code client_closed_request, once it is durable (a spy on the writer's append). */
  const nextClosedRecord = () =>
    new Promise<Record<string, unknown>>((resolve) => {
      const append = writer.append.bind(writer)
      writer.append = (line: string) => {
        const written = append(line)
        const rec = JSON.parse(line) as Record<string, unknown>
        if (rec.code === 'client_closed_request') {
          writer.append = append
          void written.then(() => resolve(rec))
        }
        return written
      }
    })
  /** Resolves when the gateway starts reading the next request's body (a 'data' listener on it). */
  const nextBodyRead = () =>
    new Promise<void>((resolve) => {
      gw.gateway.api.server.once('request', (req: IncomingMessage) => {
        const on = req.on.bind(req)
        req.on = ((event: string, listener: (...args: unknown[]) => void) => {
          on(event, listener)
          if (event === 'data') resolve()
          return req
        }) as typeof req.on
      })
    })

  const hangUpMidBody = async (sent: Buffer, declared: number) => {
    const reading = nextBodyRead()
    const socket = tls.connect({ host: '127.0.0.1', port: Number(port), ca, cert, key, servername: 'localhost' })
    await EventEmitter.once(socket, 'secureConnect')
    socket.write(`POST /v2/models/mnist/infer HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer ${token}\r\ncontent-type: application/json\r\ncontent-length: ${declared}\r\n\r\n`)
    socket.write(sent)
    await reading
    socket.destroy()
  }

  const declared = Buffer.byteLength(body)
  for (const c of [
    { name: 'half of a JSON body sent', sent: Buffer.from(body.slice(0, body.length / 2)) },
    { name: 'headers only, no byte of body', sent: Buffer.alloc(0) },
  ]) {
    const recorded = nextClosedRecord()
    await hangUpMidBody(c.sent, declared)
    const rec = await recorded
    t.match(rec, { status: 499, code: 'client_closed_request', stage: 'body-read', decision: 'denied', model: 'mnist', verb: 'infer' }, `${c.name}: the audit record`)
    t.match(rec.reason, new RegExp(`^client closed the connection after ${c.sent.length} of ${declared} body bytes: ECONNRESET aborted$`), 'with the precise reason')

    const logged = gw.logs.filter((l) => l.reqId === rec.id)
    const line = logged.find((l) => l.code === 'client_closed_request')
    t.equal(line?.level, PINO_INFO, 'logged at info')
    t.equal(line?.msg, 'client closed the request')
    t.notOk(line?.err, 'without a stack trace')
    t.notOk(logged.some((l) => (l.level as number) > PINO_INFO), 'nothing at warn or error for it')
  }
  t.notOk(gw.logs.some((l) => l.code === 'internal'), 'no internal error anywhere')

  const metrics = await gw.gateway.metrics.render()
  t.match(metrics, /^bulwark_requests_total\{code="client_closed_request",model="mnist",status="499",verb="infer"\} 2$/m, 'counted as 499')

  const res = await gw.request('/v2/models/mnist/infer', { body: JSON.parse(body) })
  t.equal(res.status, 200, 'the gateway keeps serving')
})

/** An IncomingMessage stand-in: headers, and the events readBody listens to. */
function fakeRequest(headers: Record<string, string>): IncomingMessage & EventEmitter {
  const req = new EventEmitter() as IncomingMessage & EventEmitter
  Object.assign(req, { headers, complete: false, destroyed: false, errored: null, resume: () => req })
  return req
}

async function rejection(p: Promise<unknown>): Promise<BulwarkError | Error> {
  return p.then(
    () => {
      throw new Error('expected a rejection')
    },
    (err: unknown) => err as Error,
  )
}

t.test('readBody: a client abort is client_closed_request and keeps the cause', async (t) => {
  const req = fakeRequest({ 'content-length': '100' })
  const reading = readBody(req, 1000)
  req.emit('data', Buffer.alloc(40))
  const reset = Object.assign(new Error('aborted'), { code: 'ECONNRESET' })
  req.emit('error', reset)
  req.emit('close')
  const err = await rejection(reading)
  t.ok(isBulwarkError(err))
  t.equal((err as BulwarkError).code, 'client_closed_request')
  t.equal((err as BulwarkError).status, 499)
  t.equal(err.cause, reset, "Node's error is the cause")
  t.match((err as BulwarkError).reason, /after 40 of 100 body bytes: ECONNRESET aborted/)
  t.notMatch(err.message, /ECONNRESET|40/, 'the client-facing message holds no detail')
})

t.test('readBody: a request closed before its end, with no error, is client_closed_request too', async (t) => {
  const req = fakeRequest({})
  const reading = readBody(req, 1000)
  req.emit('close')
  const err = await rejection(reading)
  t.equal((err as BulwarkError).code, 'client_closed_request')
  t.match((err as BulwarkError).reason, /after 0 of an undeclared number of body bytes$/)
})

t.test('readBody: an error that is not the client going away stays itself (the transport calls it internal)', async (t) => {
  const req = fakeRequest({ 'content-length': '10' })
  const reading = readBody(req, 1000)
  const odd = Object.assign(new Error('something else'), { code: 'ERR_SOMETHING' })
  req.emit('error', odd)
  t.equal(await rejection(reading), odd)
})

t.test('readBody: a request destroyed before the read began is refused at once, keeping the cause', async (t) => {
  const req = fakeRequest({ 'content-length': '100' })
  const reset = Object.assign(new Error('aborted'), { code: 'ECONNRESET' })
  Object.assign(req, { destroyed: true, errored: reset })
  // No event comes any more: without the check the read would wait forever.
  const err = await rejection(readBody(req, 1000))
  t.equal((err as BulwarkError).code, 'client_closed_request')
  t.equal(err.cause, reset)
  t.match((err as BulwarkError).reason, /before its body was read: ECONNRESET aborted/)
})
