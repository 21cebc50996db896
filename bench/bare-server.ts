// `node bench/bare-server.ts`: a plain Node.js HTTP server that answers every request with a
// tiny JSON body and prints its port. The control for the health-probe scenario: probed
// alongside the gateway's /healthz, it shows how much of the tail latency this machine adds
// to any process when its cores are saturated.

import http from 'node:http'
import type { AddressInfo } from 'node:net'

const server = http.createServer((_req, res) => {
  res.setHeader('content-type', 'application/json')
  res.end('{"status":"ok"}')
})
server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`))
process.on('SIGTERM', () => server.close(() => process.exit(0)))
