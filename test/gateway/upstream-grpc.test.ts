// Upstream models over gRPC (upstream.protocol: grpc): a gateway with its whole front door
// calls the model pod's gRPC listener (inference.GRPCInferenceService/ModelInfer) instead of
// its REST one. Against a real pod (Bulwark serving mnist in a child process, gRPC over mTLS
// with its development PKI): the answers equal those of a gateway calling the same pod over
// REST, one digit at a time and in a batch; a call that found no connection is retried on the
// other endpoint; without a client certificate the pod is a clean 503; the pod's refusal of one item's values (its
// INVALID_ARGUMENT value_out_of_range) refuses the batch's content, so only that item's
// request gets it; a stopped pod is answered 503 upstream_unavailable with Retry-After and
// opens the breaker, and once it is back the breaker's trial closes it again. Against a gRPC
// pod the test controls (one that never answers): the call carries raw input bytes, a gRPC
// deadline, the OIP timeout and the caller's traceparent and tracestate as metadata; a
// caller's short deadline is its own 504 and leaves the breaker closed; calls slower than
// callTimeoutMs are 503s that open it.

import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import * as grpc from '@grpc/grpc-js'
import t from 'tap'
import { deepMerge, startGateway, type TestGateway } from '../../kit/gateway.ts'
import { freePort, startGateway as startProcess, type GatewayProcess } from '../../kit/gateway-process.ts'
import { repoRoot } from '../../kit/paths.ts'
import { Changes } from '../../kit/wait.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import type { BreakerState, UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'
import { jsonBody, mnistDigits, startUpstream } from '../helpers/scaleout.ts'

const digits = mnistDigits(10)
const policy = { model: 'mnist', allow: [{ verbs: ['infer', 'metadata'], workloads: [DEV_WORKLOAD], scopes: ['mnist:infer'] }], rateLimit: { requestsPerWindow: 10_000, windowMs: 1000 } }

interface Pod {
  process: GatewayProcess
  /** The gateway's TLS settings for the pod: its CA, and a client certificate it accepts. */
  tls: { caFile: string; certFile: string; keyFile: string }
}

/** The model pod: Bulwark serving mnist, defences off but TLS on (REST and gRPC both require its dev client certificate). */
async function startPod(t: { teardown(fn: () => unknown): void }): Promise<Pod> {
  const process = await startUpstream({ tls: { enabled: true } })
  t.teardown(() => process.stop())
  const dev = path.join(process.dir, '.bulwark/dev')
  return { process, tls: { caFile: path.join(dev, 'ca.pem'), certFile: path.join(dev, 'client.pem'), keyFile: path.join(dev, 'client-key.pem') } }
}

/** A gateway (full front door, raw scores, no screening) serving mnist from `upstream`. */
async function front(t: { teardown(fn: () => unknown): void }, upstream: Record<string, unknown>, config: Record<string, unknown> = {}): Promise<TestGateway> {
  const gw = await startGateway({
    models: ['mnist'],
    policies: { mnist: policy },
    config: deepMerge({ outputPrivacy: { enabled: false }, audit: { durability: 'relaxed' }, models: { serve: [{ name: 'mnist', upstream }] } }, config),
  })
  t.teardown(() => gw.close())
  return gw
}

const backendOf = (gw: TestGateway) => gw.gateway.registry.upstreams()[0]!.backend as UpstreamBackend
const infer = (gw: TestGateway, body: unknown, headers?: Record<string, string>) => gw.request('/v2/models/mnist/infer', { body, ...(headers ? { headers } : {}) })

/** Breaker transitions of a gateway's upstream, and a way to wait for the next one to `state` after index `from`. */
function breakerWatch(t: { teardown(fn: () => unknown): void }, gw: TestGateway) {
  const states: BreakerState[] = []
  const changes = new Changes()
  t.teardown(backendOf(gw).onBreakerChange((_e, s) => {
    states.push(s)
    changes.notify()
  }))
  return { states, reached: (state: BreakerState, from: number) => changes.until(() => states.slice(from).includes(state)) }
}

t.test('over gRPC the gateway answers exactly what it answers over REST from the same pod', async (t) => {
  const pod = await startPod(t)
  const rest = await front(t, { endpoints: [`https://127.0.0.1:${pod.process.apiPort}`], tls: pod.tls })
  const viaGrpc = await front(t, { protocol: 'grpc', endpoints: [`https://127.0.0.1:${pod.process.grpcPort}`], tls: pod.tls })
  for (const [i, d] of digits.entries()) {
    const [a, b] = [await infer(rest, jsonBody([d])), await infer(viaGrpc, jsonBody([d]))]
    t.equal(b.status, 200, `digit ${i}: 200 over gRPC`)
    t.same(b.body.outputs, a.body.outputs, `digit ${i}: the same scores as over REST`)
  }
  const batch = jsonBody(digits.slice(0, 4))
  const [a, b] = [await infer(rest, batch), await infer(viaGrpc, batch)]
  t.equal(b.status, 200)
  t.same(b.body.outputs[0].shape, [4, 10])
  t.same(b.body.outputs, a.body.outputs, 'a batch of 4: the same scores')
  t.same(backendOf(viaGrpc).status(), [{ endpoint: `https://127.0.0.1:${pod.process.grpcPort}`, state: 'closed', outstanding: 0 }])

  // A call that found no connection was never sent: its one retry goes to the other endpoint.
  const dead = `https://127.0.0.1:${await freePort()}`
  const spread = await front(t, { protocol: 'grpc', endpoints: [dead, `https://127.0.0.1:${pod.process.grpcPort}`], tls: pod.tls, breaker: { volumeThreshold: 1000 } })
  const retried = []
  for (const d of digits.slice(0, 6)) retried.push((await infer(spread, jsonBody([d]))).status)
  t.same(retried, [200, 200, 200, 200, 200, 200], 'with one endpoint refusing connections, every call is served')

  // The pod's gRPC listener requires its client certificate: without one, a clean 503.
  const anon = await front(t, { protocol: 'grpc', endpoints: [`https://127.0.0.1:${pod.process.grpcPort}`], tls: { caFile: pod.tls.caFile } })
  const refused = await infer(anon, jsonBody([digits[0]!]))
  t.equal(refused.status, 503)
  t.equal(refused.body.code, 'upstream_unavailable')
  t.ok(refused.headers['retry-after'], 'with Retry-After')
})

t.test('the pod refusing one item\'s values refuses the batch\'s content: only that item\'s request gets the refusal', async (t) => {
  const pod = await startPod(t)
  // This gateway's manifest lets pixels up to 2 through; the pod's own says [0, 1] and refuses them.
  const models = await mkdtemp(path.join(os.tmpdir(), 'bulwark-models-'))
  t.teardown(() => rm(models, { recursive: true, force: true }))
  await mkdir(path.join(models, 'mnist'))
  const manifest = JSON.parse(await readFile(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8'))
  manifest.inputs[0].range = [0, 2]
  await writeFile(path.join(models, 'mnist/manifest.json'), JSON.stringify(manifest))
  await copyFile(path.join(repoRoot, 'models/mnist/model.onnx'), path.join(models, 'mnist/model.onnx'))
  const gw = await front(t, { protocol: 'grpc', endpoints: [`https://127.0.0.1:${pod.process.grpcPort}`], tls: pod.tls, maxConcurrentCalls: 1 }, { models: { directory: models } })
  const poisoned = digits[3]!.slice()
  poisoned[300] = 1.5

  const backend = backendOf(gw)
  const both = new Float32Array(2 * 784)
  both.set(digits[0]!, 0)
  both.set(poisoned, 784)
  const err = await backend.execute([{ name: 'input', datatype: 'FP32', shape: [2, 1, 28, 28], data: both }], ['probabilities'], { deadlineMs: realDeps.clock.monotonicMs() + 10_000 }).catch((e: unknown) => e)
  t.match(err, { code: 'value_out_of_range', status: 400 }, 'the pod\'s INVALID_ARGUMENT keeps its Bulwark code')
  t.ok(backend.refusesContent(err), 'and refuses the batch\'s content (the batcher retries its requests apart)')

  const alone = await Promise.all(digits.slice(0, 8).map((d) => infer(gw, jsonBody([d]))))
  t.same(alone.map((r) => r.status), digits.slice(0, 8).map(() => 200))
  // Sent together through one upstream call at a time: they queue into batches behind the first.
  const answers = await Promise.all([...digits.slice(0, 8).map((d) => infer(gw, jsonBody([d]))), infer(gw, jsonBody([poisoned]))])
  const bad = answers.pop()!
  t.same(answers.map((r) => r.status), alone.map(() => 200), 'every other request answered')
  t.same(answers.map((r) => r.body.outputs), alone.map((r) => r.body.outputs), 'each with its own digit\'s scores')
  t.equal(bad.status, 400)
  t.equal(bad.body.code, 'value_out_of_range', 'the poisoned request gets the pod\'s refusal')
  t.equal(backend.status()[0]!.state, 'closed', 'refusals are not the pod\'s faults')
})

t.test('a stopped pod: 503 with Retry-After, the breaker opens; the pod back, its trial closes it', async (t) => {
  const pod = await startPod(t)
  const breaker = { volumeThreshold: 3, errorThresholdPercentage: 50, rollingWindowMs: 10_000, rollingBuckets: 10, resetTimeoutMs: 1000 }
  const gw = await front(t, { protocol: 'grpc', endpoints: [`https://127.0.0.1:${pod.process.grpcPort}`], tls: pod.tls, breaker })
  const watch = breakerWatch(t, gw)
  t.equal((await infer(gw, jsonBody([digits[7]!]))).status, 200)
  await pod.process.stop('SIGKILL')

  const opened = watch.reached('open', 0)
  const answers = []
  for (let i = 0; i < 3; i++) answers.push(await infer(gw, jsonBody([digits[i]!])))
  t.same(answers.map((r) => [r.status, r.body.code]), answers.map(() => [503, 'upstream_unavailable']), 'each call to the stopped pod: 503 upstream_unavailable')
  t.ok(answers.every((r) => r.headers['retry-after']), 'each with Retry-After')
  await opened
  t.equal(backendOf(gw).status()[0]!.state, 'open', 'the breaker opened')
  const fast = await infer(gw, jsonBody([digits[0]!]))
  t.same([fast.status, fast.body.code, fast.headers['retry-after']], [503, 'upstream_unavailable', '1'], 'while open: 503 at once, Retry-After the seconds until its trial')

  // The pod back on the same ports, with the same PKI (its folder).
  const { apiPort, adminPort, grpcPort, dir } = pod.process
  const back = await startProcess({ tls: { enabled: true }, auth: { enabled: false }, authorization: { enabled: false }, rateLimits: { enabled: false }, clientLimits: { enabled: false }, outputPrivacy: { enabled: false }, audit: { enabled: false }, models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] } }, { cwd: dir, apiPort, adminPort, grpcPort, logLevel: 'error' })
  t.teardown(() => back.stop())
  // Each half-open lets one trial through; the first trials may still meet a connection in its reconnect backoff.
  let served = null
  for (let trial = 0; trial < 10 && !served; trial++) {
    if (backendOf(gw).status()[0]!.state === 'open') await watch.reached('half-open', watch.states.length)
    const r = await infer(gw, jsonBody([digits[7]!]))
    if (r.status === 200) served = r
  }
  t.ok(served, 'a trial call is served once the pod is back')
  t.equal(backendOf(gw).status()[0]!.state, 'closed', 'and closes the breaker')
})

interface HeldCall {
  deadline: grpc.Deadline
  metadata: grpc.Metadata
  request: any
}

/** A gRPC model pod (plaintext HTTP/2) whose ModelInfer never answers; it records each call. */
async function silentPod(t: { teardown(fn: () => unknown): void }) {
  const calls: HeldCall[] = []
  const arrived = new Changes()
  const server = new grpc.Server()
  server.addService(inferenceServiceClient().service, {
    ModelInfer: (call: grpc.ServerUnaryCall<unknown, unknown>) => {
      calls.push({ deadline: call.getDeadline(), metadata: call.metadata, request: call.request })
      arrived.notify()
    },
  })
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))))
  t.teardown(() => server.forceShutdown())
  return { endpoint: `http://127.0.0.1:${port}`, calls, call: (n: number) => arrived.until(() => calls[n]) }
}

t.test('the deadline and trace context go with the call; a caller\'s short deadline is its own 504, a slow pod\'s calls open the breaker', async (t) => {
  const pod = await silentPod(t)
  const gw = await front(t, { protocol: 'grpc', endpoints: [pod.endpoint], breaker: { volumeThreshold: 3, callTimeoutMs: 10_000 } })
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const t0 = Date.now()
  const short = await infer(gw, jsonBody([digits[1]!], { parameters: { timeout: 300_000 } }), { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, tracestate: 'vendor=abc' })
  t.equal(short.status, 504, 'the caller\'s 300 ms passed while the pod held the call')
  t.equal(short.body.code, 'deadline_exceeded')
  const c = await pod.call(0)
  const deadline = c.deadline instanceof Date ? c.deadline.getTime() : c.deadline
  t.ok(Number.isFinite(deadline) && deadline >= t0 && deadline <= Date.now() + 300, 'the pod got a gRPC deadline within the caller\'s 300 ms')
  t.ok(c.request.parameters.timeout.int64_param > 0 && c.request.parameters.timeout.int64_param <= 300_000, 'and the OIP timeout (µs)')
  t.equal(c.request.model_name, 'mnist')
  t.same(c.request.raw_input_contents.map((b: Buffer) => b.byteLength), [784 * 4], 'the input as raw bytes')
  t.same(Buffer.concat(c.request.raw_input_contents), Buffer.from(digits[1]!.buffer), 'the digit\'s own float32 bytes')
  t.match(c.metadata.get('traceparent')[0], new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`), 'the caller\'s trace goes on')
  t.same(c.metadata.get('tracestate'), ['vendor=abc'])
  for (let i = 0; i < 3; i++) t.equal((await infer(gw, jsonBody([digits[1]!], { parameters: { timeout: 100_000 } }))).status, 504)
  t.equal(backendOf(gw).status()[0]!.state, 'closed', 'callers\' short deadlines never open the breaker')

  const slow = await front(t, { protocol: 'grpc', endpoints: [pod.endpoint], breaker: { volumeThreshold: 3, callTimeoutMs: 200 } })
  const watch = breakerWatch(t, slow)
  const opened = watch.reached('open', 0)
  for (let i = 0; i < 3; i++) {
    const r = await infer(slow, jsonBody([digits[2]!]))
    t.same([r.status, r.body.code], [503, 'upstream_unavailable'], 'no answer within callTimeoutMs: the pod\'s fault')
  }
  await opened
  t.equal(backendOf(slow).status()[0]!.state, 'open', 'calls slower than callTimeoutMs open the breaker')
})
