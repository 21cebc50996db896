// Reading a request body: a small declared body is allocated whole; a large one grows as its
// bytes arrive (a Content-Length alone allocates at most UP_FRONT_BYTES), arrives intact
// whatever the chunking, and keeps the tensor bytes 8-byte aligned after the JSON header.
import { once } from 'node:events'
import http from 'node:http'
import net from 'node:net'
import t from 'tap'
import { initialRoom, readBody, UP_FRONT_BYTES } from '../../src/transport/read-body.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'

t.test('what a declared length allocates on arrival', async (t) => {
  t.equal(initialRoom(1000), 1000, 'a small body: all of it')
  t.equal(initialRoom(32 * 1024 * 1024), UP_FRONT_BYTES, 'a claimed 32 MiB: the up-front room only')
  t.ok(initialRoom(null) < UP_FRONT_BYTES, 'no Content-Length: a small start')
})

t.test('a body past the up-front room grows as it arrives and comes out intact and aligned', async (t) => {
  const size = 3 * UP_FRONT_BYTES + 12_345
  const sent = Buffer.alloc(size)
  for (let i = 0; i < size; i++) sent[i] = (i * 31 + 7) & 0xff
  const received = new Promise<Buffer>((resolve, reject) => {
    const server = http.createServer((req, res) => {
      readBody(req, 64 * 1024 * 1024).then(
        (body) => (res.end('ok'), server.close(), resolve(body)),
        (err: unknown) => (res.end('no'), server.close(), reject(err)),
      )
    })
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      const socket = net.connect(port, '127.0.0.1', async () => {
        socket.write(`POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${size}\r\n${HEADER_LENGTH}: 13\r\nConnection: close\r\n\r\n`)
        // In uneven pieces, each written once the last has drained.
        for (let at = 0; at < size; ) {
          const n = Math.min(size - at, 50_000 + (at % 7919))
          if (!socket.write(sent.subarray(at, at + n))) await once(socket, 'drain')
          at += n
        }
      })
      socket.on('error', () => {})
    })
  })
  const body = await received
  t.equal(body.length, size)
  t.ok(body.equals(sent), 'every byte in place')
  t.equal((body.byteOffset + 13) % 8, 0, 'the tensor bytes after a 13-byte JSON header start 8-byte aligned')
})
