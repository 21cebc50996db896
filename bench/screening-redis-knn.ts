// The design not kept for shared stateful screening state (docs/screening.md, "With
// state.redis"): the k-nearest search inside Redis, a Lua script that takes a request's pooled
// queries and returns the smallest mean distance to the k nearest in the caller's ring, so only
// the query goes in and one number comes back. `node bench/screening-redis-knn.ts` fills one
// ring of 1,000 pooled held-out mnist digits (the bundled settings: k 20, pool 4, 49 values)
// and prints the Redis CPU per call (the server's time in the script), for single-digit
// requests and for 64-digit ones, on a redis-server of its own.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import { freePort } from '../kit/gateway-process.ts'
import { spawnRedis } from '../kit/redis-server.ts'
import { loadMnist } from '../models/mnist/data.ts'
import { poolingEncoder } from '../src/screening/encoder.ts'
import { bytesOf, sharedDigest } from '../src/screening/shared-store.ts'

// KEYS: the ring (a 40-byte header, then slots of digest .. Float32 vector). ARGV: capacity,
// dims, k, TTL, then the items. Appends the items that are not exact repeats; returns the
// smallest score as a string (false: none).
const KNN_SCRIPT = `
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local dims = tonumber(ARGV[2])
local k = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local H = 40
local D = 16
local slot = D + 4 * dims
local fmt = '<' .. string.rep('f', dims)
local ring = redis.call('GET', key)
local count, nxt = 0, 0
if ring then
  count = tonumber(string.sub(ring, 1, 10))
  nxt = tonumber(string.sub(ring, 11, 20))
  if not count or not nxt or count > cap or nxt >= cap or string.len(ring) ~= H + count * slot then
    redis.call('DEL', key)
    ring = false
    count, nxt = 0, 0
  end
end
local seen, digest, rows = {}, {}, {}
for i = 0, count - 1 do
  local d = string.sub(ring, H + i * slot + 1, H + i * slot + D)
  seen[d] = true
  digest[i] = d
end
local sqrt = math.sqrt
local huge = math.huge
local score = huge
for j = 5, #ARGV do
  local item = ARGV[j]
  local d = string.sub(item, 1, D)
  if not seen[d] then
    local q = { struct.unpack(fmt, item, D + 1) }
    if count >= k then
      local best = {}
      for b = 1, k do best[b] = huge end
      for i = 0, count - 1 do
        local v = rows[i]
        if not v then
          v = { struct.unpack(fmt, ring, H + i * slot + D + 1) }
          rows[i] = v
        end
        local bound = best[k]
        local s = 0
        for c = 1, dims do
          local t = q[c] - v[c]
          s = s + t * t
          if c % 4 == 0 and s > bound then break end
        end
        if s < bound then
          local b = k
          while b > 1 and best[b - 1] > s do
            best[b] = best[b - 1]
            b = b - 1
          end
          best[b] = s
        end
      end
      local sum = 0
      for b = 1, k do sum = sum + sqrt(best[b] / dims) end
      local m = sum / k
      if m < score then score = m end
    end
    if count == cap then seen[digest[nxt]] = nil else count = count + 1 end
    redis.call('SETRANGE', key, H + nxt * slot, item)
    digest[nxt] = d
    rows[nxt] = q
    seen[d] = true
    nxt = (nxt + 1) % cap
  end
end
redis.call('SETRANGE', key, 0, string.format('%010d%010d%010d%010d', count, nxt, cap, slot))
redis.call('PEXPIRE', key, ttl)
if score == huge then return false end
return string.format('%.17g', score)
`

const images = loadMnist().test.images
const encoder = poolingEncoder({ channels: 1, height: 28, width: 28, lo: 0, hi: 1 }, 4)
const item = (i: number) => Buffer.concat([sharedDigest(images[i]!), bytesOf(encoder.encode(images[i]!))])

const port = await freePort()
const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-bench-redis-'))
const server = await spawnRedis(['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'])
const redis = new Redis(`redis://127.0.0.1:${port}/0`) as Redis & { knn(key: string, ...args: (number | Buffer)[]): Promise<string | null> }
try {
  redis.defineCommand('knn', { numberOfKeys: 1, lua: KNN_SCRIPT })
  const args = [1000, encoder.dims, 20, 3_600_000] as const
  let next = 0
  for (; next < 1000; next++) await redis.knn('ring', ...args, item(next))
  const usecPerCall = async (calls: number, items: number) => {
    await redis.config('RESETSTAT')
    for (let c = 0; c < calls; c++) await redis.knn('ring', ...args, ...Array.from({ length: items }, () => item(next++ % images.length)))
    const m = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(await redis.info('commandstats'))!
    return Number(m[2]) / Number(m[1])
  }
  const single = await usecPerCall(200, 1)
  const batch = await usecPerCall(10, 64)
  console.log(`k-nearest inside Redis, full ring of 1,000: ${(single / 1000).toFixed(2)} ms of Redis CPU per single-digit request; ${(batch / 1000).toFixed(0)} ms per 64-digit request (${(batch / 64 / 1000).toFixed(2)} ms a digit)`)
} finally {
  redis.disconnect()
  await server.stop()
  rmSync(dir, { recursive: true, force: true })
}
