// Front-door scenarios: what mTLS + JWT + authorization + rate limiting cost.
// - ocr-cls, binary tensors, concurrency 64: full front door vs the same gateway over plain
//   HTTP with those stages off;
// - mnist at a moderate fixed rate: added latency at p50/p90/p99;
// - the gateway terminating mTLS itself vs nginx (Debian's package) terminating mTLS in front
//   of the plain gateway.

import { spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { closedLoop, openLoop, type LoadResult } from './load.ts'
import { binaryRequest, ocrImage } from '../kit/payloads.ts'
import { freePort, noDefences, startGateway } from '../kit/gateway-process.ts'
import { secureEnv, type SecureEnv } from './secure-env.ts'
import { mnistDigits, type BenchOptions } from './core.ts'
import type { Row } from './report.ts'

/** nginx terminating mTLS (TLS 1.3, client certificate required) and proxying with keep-alive. */
async function startNginx(env: SecureEnv, upstreamPort: number): Promise<{ port: number; stop: () => Promise<void> } | null> {
  if (spawnSync('nginx', ['-v']).error) return null
  const port = await freePort()
  const conf = path.join(env.dir, 'nginx.conf')
  const asRoot = process.getuid?.() === 0
  writeFileSync(conf, `
${asRoot ? 'user root;' : ''}
worker_processes 1;
pid ${env.dir}/nginx.pid;
error_log ${env.dir}/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${env.dir}/nginx-body;
  proxy_temp_path ${env.dir}/nginx-proxy;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  proxy_buffering off;
  proxy_request_buffering on;
  upstream gateway { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${env.pki.files.serverCert};
    ssl_certificate_key ${env.pki.files.serverKey};
    ssl_client_certificate ${env.pki.files.ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`)
  const child = spawn('nginx', ['-c', conf, '-p', env.dir, '-g', 'daemon off;'], { stdio: 'ignore' })
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 100))
    try {
      const s = await import('node:net').then((net) => new Promise<boolean>((resolve) => {
        const c = net.connect(port, '127.0.0.1', () => { c.end(); resolve(true) }).on('error', () => resolve(false))
      }))
      if (s) break
    } catch {}
  }
  return { port, stop: async () => { child.kill('SIGTERM'); await new Promise((r) => child.once('exit', r)) } }
}

export async function frontdoorBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const group = 'frontdoor'
  const rows: Row[] = []
  const raw: Record<string, LoadResult> = {}
  const env = await secureEnv()
  const models = { serve: [{ name: 'ocr-cls', workers: 1, intraOpThreads: 2, batching: { enabled: true, maxBatchSize: 32 } }, { name: 'mnist', workers: 1, intraOpThreads: 1 }] }
  const off = { ...noDefences, models }
  const on = {
    ...noDefences,
    tls: { enabled: true },
    auth: { enabled: true },
    authorization: { enabled: true },
    // One bench principal sends all 64 concurrent requests; the cap must not refuse them.
    rateLimits: { enabled: true, maxInFlightPerPrincipal: 1024 },
    policies: { directory: env.policies() },
    models,
  }
  const tlsOnly = { ...noDefences, tls: { enabled: true }, models }
  const img = ocrImage(1)
  const bearer = { authorization: `Bearer ${env.token}` }
  const digits = mnistDigits(100)
  const rate = 200

  const plain = await startGateway(off, { cwd: env.dir })
  const secure = await startGateway(on, { cwd: env.dir })
  const tlsGw = await startGateway(tlsOnly, { cwd: env.dir })
  const nginx = await startNginx(env, plain.apiPort)
  try {
    const targets = [
      { name: 'plain HTTP, front door off', origin: `http://127.0.0.1:${plain.apiPort}`, connect: undefined, headers: {} },
      { name: 'mTLS + JWT + policy + rate limit', origin: `https://127.0.0.1:${secure.apiPort}`, connect: env.connect, headers: bearer },
      { name: 'gateway terminating mTLS only', origin: `https://127.0.0.1:${tlsGw.apiPort}`, connect: env.connect, headers: {} },
      ...(nginx ? [{ name: 'nginx terminating mTLS -> plain', origin: `https://127.0.0.1:${nginx.port}`, connect: env.connect, headers: {} }] : []),
    ]
    // Interleave repeated short runs so drift in machine load hits every target alike.
    const base = targets[0]!
    for (const t of targets) {
      log(`ocr-cls binary c64: ${t.name}`)
      const req = binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], img, t.headers)
      const r = await closedLoop({ origin: t.origin, connect: t.connect, concurrency: 64, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: () => req })
      raw[`ocr-cls c64 ${t.name}`] = r
    }
    for (const t of targets) {
      log(`mnist at ${rate}/s: ${t.name}`)
      const reqs = digits.map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d, t.headers))
      const r = await openLoop({ origin: t.origin, connect: t.connect, ratePerSec: rate, connections: 8, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: (i) => reqs[i % reqs.length]! })
      raw[`mnist ${rate}/s ${t.name}`] = r
    }
    const b = raw[`ocr-cls c64 ${base.name}`]!
    for (const t of targets) {
      const r = raw[`ocr-cls c64 ${t.name}`]!
      rows.push({ group, scenario: `ocr-cls binary: ${t.name}`, concurrency: 64, itemsPerSec: r.itemsPerSec, p50: r.p50, p99: r.p99, ratio: r.itemsPerSec / b.itemsPerSec, ratioTo: 'plain', errors: r.requests - r.ok })
    }
    const bm = raw[`mnist ${rate}/s ${base.name}`]!
    for (const t of targets) {
      const r = raw[`mnist ${rate}/s ${t.name}`]!
      rows.push({ group, scenario: `mnist ${rate}/s: ${t.name}`, concurrency: 'open', itemsPerSec: r.rps, p50: r.p50, p99: r.p99, errors: r.requests - r.ok, note: `p90 ${r.p90.toFixed(2)} ms (+${(r.p90 - bm.p90).toFixed(2)} vs plain)` })
    }
  } finally {
    await Promise.all([plain.stop(), secure.stop(), tlsGw.stop(), nginx?.stop()])
  }
  return { rows, raw }
}
