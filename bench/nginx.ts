// nginx (Debian's package) as a plain reverse proxy in front of a model pod, for the scale-out
// bench's anchor: the same hop Bulwark's upstream mode makes, with nothing but proxying. One
// worker process (Bulwark's hop is one event loop too), keep-alive connections to the pod,
// and with `tls` mTLS to it with the given client certificate, verified against its CA, as
// Bulwark's upstream client does. Started on loopback in a temp folder; stop() ends it.

import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { freePort } from '../kit/gateway-process.ts'

export interface Nginx {
  port: number
  /** The master process and its workers, for CPU accounting. */
  pids(): number[]
  stop(): Promise<void>
}

/** Whether nginx can be run here; when not, what to install. */
export function nginxMissing(): string | null {
  const r = spawnSync('nginx', ['-v'], { stdio: 'ignore' })
  return r.error || r.status !== 0 ? 'nginx is not installed (apt-get install nginx-light); its row is skipped' : null
}

export async function startNginx(o: { pod: string; tls?: { caFile: string; certFile: string; keyFile: string } }): Promise<Nginx> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-nginx-'))
  const port = await freePort()
  const pod = new URL(o.pod)
  const tls = o.tls
    ? `proxy_ssl_certificate ${o.tls.certFile}; proxy_ssl_certificate_key ${o.tls.keyFile}; proxy_ssl_trusted_certificate ${o.tls.caFile};
      proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;`
    : ''
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${path.join(dir, t)};`).join(' ')
  writeFileSync(
    path.join(dir, 'nginx.conf'),
    `worker_processes 1;
daemon off;
pid ${path.join(dir, 'nginx.pid')};
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  ${temp}
  client_max_body_size 64m;
  # Bodies and answers in memory, as Bulwark holds them (and its temp folder is not the worker user's).
  client_body_buffer_size 4m;
  proxy_buffers 16 64k;
  upstream pod { server ${pod.host}; keepalive 128; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass ${pod.protocol}//pod;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      ${tls}
    }
  }
}
`,
  )
  const child = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'inherit'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || i > 100) throw new Error('nginx did not start listening')
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.end(), resolve(true)))
      s.on('error', () => resolve(false))
    })
    if (up) break
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    port,
    pids() {
      const master = child.pid!
      const workers = readFileSync(`/proc/${master}/task/${master}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
      return [master, ...workers]
    },
    async stop() {
      child.kill('SIGTERM')
      await exited
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
