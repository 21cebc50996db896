// The extraction detector (prada.ts) with each principal's state in Redis, so replicas judge a
// caller on all of its queries the model answered (refused ones too, as prada.ts says), not on
// the share that reached them.
//
// Layout, per model and principal, under
// `<prefix>screening:extraction:<model>:w<windowSize>g<growingSetPerClass>d<dims>u8:<principal>`:
//   :m      hash: e (epoch: Redis TIME when the state was created), v (version: one up per
//           commit), per class k seen r<k> (its set's region in :x), l<version>: the field
//           writes of each of the last LOG_COMMITS commits, and per replica q<id>: the digests
//           its last read found new, for its commit to write (READ_SCRIPT)
//   :x      one string, each field of prada-copy.ts at a fixed place: the distances (a header
//           and windowSize Float64), the digests of the distinct queries (a header and
//           windowSize 16-byte slots; only Redis reads them), then one region per class: a
//           header and growingSetPerClass pooled queries at one byte a value. Never raw inputs.
//   :claim  which request may commit next while replicas contend (below)
// Every commit renews the TTL (ttlMs) of :m and :x, so they expire together, ttlMs after the
// caller's last new query. Two keys a script keeps the key names, which carry the principal,
// from costing more than the data. Writes are SETRANGEs of the slots written: no ring is read
// into Lua and written back (a 44 KiB read and rewrite took 216 us of Redis CPU, SETRANGE 4 us).
//
// Each replica keeps a copy of the states of the principals it judged lately (prada-copy.ts;
// bounded like the in-process store: maxPrincipals, maxStoredQueries, least recently seen
// forgotten first), tagged with the epoch and version it is. A request reads with one script
// (READ_SCRIPT) that gets the copy's tag and the request's digests, says which queries are
// exact repeats, and returns only the version when the copy is current, the writes of the
// commits since when the log reaches back that far, or else the whole distances; plus the
// whole set of each class the batch was predicted as that the copy does not hold (a copy holds
// only the classes its requests needed). Digests go in once and never come back: copies hold
// none. The replica brings its copy up to date, judges the batch on it with the in-process
// code (prada.ts judgeBatch) and Redis's answers, and commits
// the slots the judgement wrote with a script (COMMIT_SCRIPT) that first checks the version:
// if another request committed since, nothing is written, the copy's journal undoes the
// judgement (the copy is again the version it read) and the request reads and judges again.
// A replica queues its own requests per principal (keyed-queue.ts), so only requests on other
// replicas at the same moment make it read again. A commit whose reply is lost (timeout) or a
// log that does not fit the copy drops the copy, and the state is read whole. The outcome is the
// one a single replica reaches with the requests in the order Redis committed them.
//
// Liveness: replicas that each stream one principal's requests could keep beating one
// another's writes. After OPTIMISTIC_ATTEMPTS lost races a request claims the principal's
// state (`claim`, SET NX with a lease of CLAIM_LEASE_MS): while a claim stands, only its
// holder's write is accepted, and the write ends it. A replica that dies holding a claim
// delays the others by the lease at most.

import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { systemClock, type Clock, type RandomSource } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import type { DetectorResult, ScreenBatch, SharedDetector } from './detector.ts'
import { KeyedQueue } from './keyed-queue.ts'
import { CLASS_HEADER, CopyOutOfStep, decodeWrites, encodeWrites, PradaCopy, RING_HEADER, type FieldWrite } from './prada-copy.ts'
import { argmax, judgeBatch, PRADA_DETECTOR, type PradaOptions } from './prada.ts'
import { PrincipalStore } from './principal-store.ts'
import { REPEAT_RULE_LUA, SHARED_DIGEST_BYTES, sharedDigest, stateKey, stateUnavailable, type ScreeningStore } from './shared-store.ts'

/** Races lost to other replicas' writes before a request claims the principal's state. */
export const OPTIMISTIC_ATTEMPTS = 3
/** Commits kept in a principal's log: a copy at most this many behind gets only the writes since. */
export const LOG_COMMITS = 16
/** A claim's lease: longer than a read and a write take (two commands, commandTimeoutMs each). */
const CLAIM_LEASE_MS = 2_000
/** How often a request waiting for another replica's claim asks again, and for how long at most (clock time). */
const CLAIM_POLL_MS = 2
const CLAIM_WAIT_MS = 3_000

// Lua: the used part of the ring at `at` in the state's string (its header and `count` slots;
// the header alone when its count is not valid, false when the ring was never written).
const RING_LUA = `
local function ring(key, at, header, slot, cap)
  local head = redis.call('GETRANGE', key, at, at + header - 1)
  if string.len(head) < header then return false end
  local count = struct.unpack('<d', head)
  if count ~= count or count < 0 or count > cap or count ~= math.floor(count) then return head end
  return redis.call('GETRANGE', key, at, at + header - 1 + count * slot)
end
`

// KEYS: meta, state. ARGV: the copy's epoch and version, windowSize, dims, growingSetPerClass,
// TTL (ms), this replica's stash field, the request's digests (16 bytes each, in one string),
// then one entry per class of the batch: '+c<k>' held by the copy, '-c<k>' not. Returns {epoch,
// version, answers, mode, n, n payload items, then the set of each class to send}: answers has
// one character per query, '1' new and '0' an exact repeat; mode 'c' (the copy is current; no
// payload), 'l' (the log entries of the commits since the copy's version) or 'w' (the
// distances; every class of the batch is sent).
//
// The answers are remember() of prada.ts run on Redis's digests' ring (shared-store.ts
// REPEAT_RULE_LUA, as the stateful ring's script does): a query is a repeat when its digest is
// in the ring and its slot was not overwritten by an earlier query of the same request (the
// ring full), or when an earlier query of the request with the same digest was remembered and
// its slot not overwritten since. Only the ring's used slots are searched, at
// slot boundaries. What the new queries write (their digests at the slots they take, then the
// ring's header) is left as this replica's stash in meta, with the epoch and version it was
// computed at and the SHA-1 of the request's digests (its first 16 hex digits); the commit
// applies it if all three are still its own. A replica judges one request of a principal at a
// time (a queue), so one stash field per replica is enough; replicas whose ids collide (one
// seeded random source) may overwrite each other's stash, but a stash is a function of those
// three, so a commit never writes digests its request did not judge with.
const READ_SCRIPT = `${RING_LUA}${REPEAT_RULE_LUA}
local meta, state = KEYS[1], KEYS[2]
local e = redis.call('HGET', meta, 'e') or ''
local v = tonumber(redis.call('HGET', meta, 'v') or '0')
local W, dims, G = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local mode, payload = 'w', {}
if e == ARGV[1] then
  local from = tonumber(ARGV[2])
  if from == v then
    mode = 'c'
  elseif from < v and v - from <= ${LOG_COMMITS} then
    local fields = {}
    for i = from + 1, v do fields[#fields + 1] = 'l' .. i end
    payload = redis.call('HMGET', meta, unpack(fields))
    mode = 'l'
    for i = 1, #fields do if not payload[i] then mode = 'w' end end
  end
end
if mode == 'w' then payload = {ring(state, 0, ${RING_HEADER}, 8, W)} end
local D, S0 = ${SHARED_DIGEST_BYTES}, ${RING_HEADER} + 8 * W
local count, next, ds = 0, 0, ''
-- No epoch: the commit starts the state afresh, whatever bytes are left.
local head = e ~= '' and redis.call('GETRANGE', state, S0, S0 + ${RING_HEADER} - 1) or ''
if string.len(head) == ${RING_HEADER} then
  local c, n = struct.unpack('<dd', head)
  if c == math.floor(c) and n == math.floor(n) and c >= 0 and c <= W and n >= 0 and n < W and (c == W or n == c) then
    count, next = c, n
    if count > 0 then ds = redis.call('GETRANGE', state, S0 + ${RING_HEADER}, S0 + ${RING_HEADER} + count * D - 1) end
  end
end
if string.len(ds) ~= count * D then count, next, ds = 0, 0, '' end
local rule = repeatRule(ds, 0, count, next, W)
local digests, answers, stash = ARGV[8], {}, {}
for j = 0, string.len(digests) / D - 1 do
  local d = string.sub(digests, j * D + 1, (j + 1) * D)
  local slot = rule.take(d)
  answers[j + 1] = slot and '1' or '0'
  if slot then stash[#stash + 1] = struct.pack('<I4', slot) .. d end
end
count, next = rule.count, rule.next
if #stash > 0 then
  redis.call('HSET', meta, ARGV[7], struct.pack('<d', v) .. string.format('%-16s', e) .. string.sub(redis.sha1hex(digests), 1, 16) .. struct.pack('<dd', count, next) .. table.concat(stash))
  if redis.call('PTTL', meta) < 0 then redis.call('PEXPIRE', meta, ARGV[6]) end
end
local reply = {e, tostring(v), table.concat(answers), mode, tostring(#payload)}
for i = 1, #payload do reply[#reply + 1] = payload[i] end
local sets = 2 * ${RING_HEADER} + ${8 + SHARED_DIGEST_BYTES} * W
for j = 9, #ARGV do
  if mode == 'w' or string.sub(ARGV[j], 1, 1) == '-' then
    local r = redis.call('HGET', meta, 'r' .. string.sub(ARGV[j], 3))
    reply[#reply + 1] = r and ring(state, sets + tonumber(r) * (${CLASS_HEADER} + G * dims), ${CLASS_HEADER}, dims, G) or false
  end
end
return reply
`

// KEYS: meta, state, claim. ARGV: the epoch and version the writes were computed from ('' and
// 0: no state yet), TTL (ms), the request's claim token ('' without one), windowSize, dims,
// growingSetPerClass, this replica's stash field, when the read found new queries (their
// digests are in the stash) the first 16 hex digits of the SHA-1 of the request's digests,
// else '0', then the field writes in one string (prada-copy.ts
// encodeWrites). Returns {epoch, version} of the state written, or {} without writing when the
// version moved on, another request holds the claim, or the stash is not the one of this epoch
// and version. The commit's log entry (meta's l<version>) is the version (Float64) and the
// field writes as sent; the digests the stash writes are not in it (copies never read them).
const COMMIT_SCRIPT = `
local meta, state, claimKey = KEYS[1], KEYS[2], KEYS[3]
local claim = redis.call('GET', claimKey)
if claim and claim ~= ARGV[4] then return {} end
local e = redis.call('HGET', meta, 'e') or ''
local v = tonumber(redis.call('HGET', meta, 'v') or '0')
if e ~= ARGV[1] or v ~= tonumber(ARGV[2]) then return {} end
local W, dims, G = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
-- The writes, read whole before anything is written: per field its id (0: the distances, k + 1:
-- class k), reset flag, header, then runs of slots (first slot, count, their bytes).
local blob, writes, at = ARGV[10] or '', {}, 1
while at <= #blob do
  local id, hb, sb, cap, _
  id, _, at = struct.unpack('<I4B', blob, at) -- the reset flag is for copies
  if id == 0 then hb, sb, cap = ${RING_HEADER}, 8, W else hb, sb, cap = ${CLASS_HEADER}, dims, G end
  local w = {id = id, header = string.sub(blob, at, at + hb - 1), runs = {}}
  if #w.header ~= hb then return redis.error_reply('commit: a write is cut short') end
  at = at + hb
  local runs
  runs, at = struct.unpack('<H', blob, at)
  for r = 1, runs do
    local first, n
    first, n, at = struct.unpack('<HH', blob, at)
    if first + n > cap then return redis.error_reply('commit: a write does not fit its field') end
    if id == 0 then
      w.runs[r] = {hb + first * sb, string.sub(blob, at, at + n * sb - 1)}
      at = at + n * sb
      if at - 1 > #blob then return redis.error_reply('commit: a write is cut short') end
    else
      -- Pooled queries, zero-run coded: (zeros, literals) pairs, then the literals.
      local cells, filled = {}, 0
      while filled < n * dims do
        local z, l = string.byte(blob, at, at + 1)
        if not l or z + l == 0 or filled % dims + z + l > dims or at + 1 + l > #blob then return redis.error_reply('commit: a pooled query is malformed') end
        cells[#cells + 1] = string.rep('\\0', z) .. string.sub(blob, at + 2, at + 1 + l)
        filled, at = filled + z + l, at + 2 + l
      end
      w.runs[r] = {hb + first * sb, table.concat(cells)}
    end
  end
  writes[#writes + 1] = w
end
local stash = redis.call('HGET', meta, ARGV[8])
if stash then redis.call('HDEL', meta, ARGV[8]) end
if ARGV[9] ~= '0' and not (stash and struct.unpack('<d', stash) == v and string.sub(stash, 9, 40) == string.format('%-16s', e) .. ARGV[9]) then return {} end
if e == '' then
  redis.call('DEL', meta, state)
  local now = redis.call('TIME')
  e = string.format('%010d%06d', tonumber(now[1]), tonumber(now[2]))
end
v = v + 1
if ARGV[9] ~= '0' then
  local S0 = ${RING_HEADER} + 8 * W
  for at = 41 + ${RING_HEADER}, #stash, 4 + ${SHARED_DIGEST_BYTES} do
    redis.call('SETRANGE', state, S0 + ${RING_HEADER} + struct.unpack('<I4', stash, at) * ${SHARED_DIGEST_BYTES}, string.sub(stash, at + 4, at + 3 + ${SHARED_DIGEST_BYTES}))
  end
  redis.call('SETRANGE', state, S0, string.sub(stash, 41, 40 + ${RING_HEADER}))
end
for _, w in ipairs(writes) do
  local base = 0
  if w.id > 0 then
    -- A class's set lives in a region of its own, handed out when the class first comes.
    local r = redis.call('HGET', meta, 'r' .. (w.id - 1))
    if not r then
      r = redis.call('HINCRBY', meta, 'n', 1) - 1
      redis.call('HSET', meta, 'r' .. (w.id - 1), r)
    end
    base = 2 * ${RING_HEADER} + ${8 + SHARED_DIGEST_BYTES} * W + tonumber(r) * (${CLASS_HEADER} + G * dims)
  end
  redis.call('SETRANGE', state, base, w.header)
  for _, run in ipairs(w.runs) do redis.call('SETRANGE', state, base + run[1], run[2]) end
end
redis.call('HSET', meta, 'e', e, 'v', tostring(v), 'l' .. v, struct.pack('<d', v) .. blob)
if v > ${LOG_COMMITS} then redis.call('HDEL', meta, 'l' .. (v - ${LOG_COMMITS})) end
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', state, ARGV[3])
if claim then redis.call('DEL', claimKey) end
return {e, tostring(v)}
`

interface Scripts {
  bulwarkPradaReadBuffer(numberOfKeys: number, ...args: (string | number | Buffer)[]): Promise<(Buffer | null)[]>
  bulwarkPradaCommitBuffer(numberOfKeys: number, ...args: (string | number | Buffer)[]): Promise<Buffer[]>
}

/** A log entry: the version it made and its field writes; throws CopyOutOfStep when malformed. */
export function parseEntry(entry: Buffer, dims: number): { version: number; writes: FieldWrite[] } {
  if (entry.length < 8) throw new CopyOutOfStep('log entry cut short')
  return { version: entry.readDoubleLE(0), writes: decodeWrites(entry.subarray(8), dims) }
}

/** Brings the copy to the state READ_SCRIPT's reply tells, and returns its answers (new: true); throws CopyOutOfStep when the log does not fit the copy. */
function applyRead(copy: PradaCopy, reply: (Buffer | null)[], classes: readonly number[], held: readonly boolean[], dims: number): boolean[] {
  const epoch = reply[0]!.toString('latin1')
  const version = Number(reply[1]!.toString('latin1'))
  const answers = [...reply[2]!.toString('latin1')].map((a) => a === '1')
  const mode = reply[3]!.toString('latin1')
  const n = Number(reply[4]!.toString('latin1'))
  const payload = reply.slice(5, 5 + n)
  if (mode === 'l') {
    for (const entry of payload) {
      const e = parseEntry(entry ?? Buffer.alloc(0), dims)
      if (e.version !== copy.version + 1) throw new CopyOutOfStep(`log entry ${e.version} after version ${copy.version}`)
      copy.apply(e.writes)
      copy.version = e.version
    }
    if (copy.version !== version) throw new CopyOutOfStep(`the log ends at ${copy.version}, the state is ${version}`)
  } else if (mode === 'w') {
    copy.clear()
    copy.restoreDistances(payload[0] ?? null)
  }
  const sent = classes.filter((_, i) => mode === 'w' || !held[i])
  sent.forEach((c, i) => copy.restoreClass(c, reply[5 + n + i] ?? null))
  copy.epoch = epoch
  copy.version = version
  return answers
}

export function createSharedPradaDetector(o: PradaOptions, model: string, store: ScreeningStore, random: RandomSource, clock: Clock = systemClock): SharedDetector {
  const dims = o.encoder.dims
  const shape = `w${o.windowSize}g${o.growingSetPerClass}d${dims}u8`
  const redis = store.redis as Redis & Scripts
  if (typeof (redis as Partial<Scripts>).bulwarkPradaReadBuffer !== 'function') {
    store.redis.defineCommand('bulwarkPradaRead', { lua: READ_SCRIPT })
    store.redis.defineCommand('bulwarkPradaCommit', { lua: COMMIT_SCRIPT })
  }
  const queue = new KeyedQueue()
  const copies = new PrincipalStore<PradaCopy>({
    maxPrincipals: o.maxPrincipals,
    maxUnits: o.maxStoredQueries,
    create: () => new PradaCopy(o.windowSize, dims, o.growingSetPerClass),
    units: (c) => c.stored,
  })
  // Claim tokens: this replica's random id and a count, unique across replicas.
  const replica = Buffer.from(random.bytes(12)).toString('hex')
  let claims = 0
  // This replica's stash field in a principal's meta hash (READ_SCRIPT).
  const stash = `q${replica.slice(0, 16)}`
  const unavailable = (err: unknown) => stateUnavailable(`extraction detector on model ${model}`, err)
  const contention = (why: string) =>
    new BulwarkError('state_unavailable', 'screening state cannot be updated right now; retry after the Retry-After delay', {
      reason: `extraction detector on model ${model}: ${why}`,
      headers: { 'retry-after': '1' },
    })

  /**
   * Brings the copy up to Redis's state, with the sets of `classes`, and returns Redis's answer
   * for each query (new: true, an exact repeat: false); throws CopyOutOfStep when the log does
   * not fit the copy.
   */
  const sync = async (copy: PradaCopy, base: string, digests: Buffer, classes: readonly number[]): Promise<boolean[]> => {
    const held = classes.map((c) => copy.known.has(c))
    let reply: (Buffer | null)[]
    try {
      reply = await redis.bulwarkPradaReadBuffer(2, `${base}:m`, `${base}:x`, copy.epoch, copy.version, o.windowSize, dims, o.growingSetPerClass, store.ttlMs, stash, digests, ...classes.map((c, i) => `${held[i] ? '+' : '-'}c${c}`))
    } catch (err) {
      throw unavailable(err)
    }
    return applyRead(copy, reply, classes, held, dims)
  }

  /**
   * One read, judgement on the copy and conditional commit; null when another request wrote
   * first or holds the claim (the judgement undone). With a claim token the commit is made
   * even when nothing changed, to end the claim.
   */
  const attempt = async (batch: ScreenBatch, probabilities: readonly Float32Array[], digests: Buffer, classes: readonly number[], token: string): Promise<{ result: DetectorResult | null } | null> => {
    const base = stateKey('extraction', model, shape, batch.principal)
    const copy = copies.use(batch.principal)
    let answers: boolean[]
    try {
      answers = await sync(copy, base, digests, classes)
    } catch (err) {
      if (!(err instanceof CopyOutOfStep)) throw err
      copy.clear()
      answers = await sync(copy, base, digests, classes)
    }
    if (answers.length !== batch.items.length) {
      copy.clear()
      copies.settle(batch.principal)
      throw unavailable(new Error(`Redis answered for ${answers.length} of ${batch.items.length} queries`))
    }
    copy.begin(classes, answers)
    // Each query's digest, as judgeBatch passes it to remember(), is its index: the copy looks up Redis's answer.
    const result = judgeBatch(copy, { principal: batch.principal, items: batch.items, digests: batch.items.map((_, i) => i) }, probabilities, o)
    const fresh = answers.some(Boolean)
    const writes = copy.writes()
    if (writes.length === 0 && !fresh && !token) {
      copy.end() // only exact repeats: nothing to write
      copies.settle(batch.principal)
      return { result }
    }
    let reply: Buffer[]
    try {
      reply = await redis.bulwarkPradaCommitBuffer(3, `${base}:m`, `${base}:x`, `${base}:claim`, copy.epoch, copy.version, store.ttlMs, token, o.windowSize, dims, o.growingSetPerClass, stash, fresh ? createHash('sha1').update(digests).digest('hex').slice(0, 16) : '0', encodeWrites(writes))
    } catch (err) {
      copy.clear() // the commit may or may not have been made: read whole next time
      copies.settle(batch.principal)
      throw unavailable(err)
    }
    if (reply.length < 2) {
      copy.undo()
      copies.settle(batch.principal)
      return null
    }
    copy.committed(reply[0]!.toString('latin1'), Number(reply[1]!.toString('latin1')))
    copies.settle(batch.principal)
    return { result }
  }

  /** Waits until this request holds the principal's claim (SET NX), polling while another does. */
  const claim = async (principal: string, token: string): Promise<void> => {
    const claimKey = `${stateKey('extraction', model, shape, principal)}:claim`
    const giveUpMs = clock.monotonicMs() + CLAIM_WAIT_MS
    for (;;) {
      let ok: string | null
      try {
        ok = await redis.set(claimKey, token, 'PX', CLAIM_LEASE_MS, 'NX')
      } catch (err) {
        throw unavailable(err)
      }
      if (ok === 'OK') return
      if (clock.monotonicMs() >= giveUpMs) break
      await clock.sleep(CLAIM_POLL_MS)
    }
    throw contention(`another replica held the principal's state for ${CLAIM_WAIT_MS} ms`)
  }

  return {
    ...PRADA_DETECTOR,
    mode: o.mode,
    shared: true,
    inspect(batch: ScreenBatch): Promise<DetectorResult | null> {
      const probabilities = batch.probabilities
      if (!probabilities) return Promise.reject(new Error('extraction detector needs the model output'))
      const digests = Buffer.concat(batch.items.map(sharedDigest))
      const classes = [...new Set(probabilities.map(argmax))]
      return queue.run(batch.principal, async () => {
        for (let i = 0; i < OPTIMISTIC_ATTEMPTS; i++) {
          const done = await attempt(batch, probabilities, digests, classes, '')
          if (done) return done.result
        }
        // Contended: claim the state so that this write is the next one. Holding the claim, the
        // write fails only if the lease ran out first; then claim again, twice at most.
        for (let i = 0; i < 2; i++) {
          const token = `${replica}:${++claims}`
          await claim(batch.principal, token)
          const done = await attempt(batch, probabilities, digests, classes, token)
          if (done) return done.result
        }
        throw contention(`the principal's claim ran out twice before its write (lease ${CLAIM_LEASE_MS} ms)`)
      })
    },
    memory: () => ({ principals: copies.principals, stored: copies.units, evictions: copies.evictions }),
  }
}
