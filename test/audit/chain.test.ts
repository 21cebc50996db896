// The chain step of the audit writer, pure: a batch of records and checkpoints in, chained
// lines and the next chain state out; and where a chain continues from the lines on disk.

import t from 'tap'
import { chainBatch, checkpointSignatureValid, decodeMarks, GENESIS, newChain, resumeChain, sha256, type ChainContext, type CheckpointLine } from '../../src/audit/chain.ts'
import { body, testKey } from './helpers.ts'

const ctx = (over: Partial<ChainContext> = {}): ChainContext => ({
  at: '2030-01-01T00:00:00.000Z',
  file: 'audit-000000000001-20300101T000000000Z.jsonl',
  opensFile: false,
  checkpointEveryRecords: 3,
  key: testKey,
  ...over,
})
const parse = (line: string) => JSON.parse(line) as Record<string, unknown>

t.test('a new file opens with a checkpoint; every line points at the one before, the first at the genesis', async (t) => {
  const start = newChain()
  const step = chainBatch(start, [{ kind: 'record', body: body(1) }, { kind: 'record', body: body(2) }], ctx({ opensFile: true }))
  t.same(start, newChain(), 'the state passed in is not changed')
  t.equal(step.lines.length, 3)
  t.match(parse(step.lines[0]!), { seq: 1, prev: GENESIS, type: 'checkpoint', event: 'open', since: 1, head: GENESIS })
  for (let i = 1; i < step.lines.length; i++) {
    t.match(parse(step.lines[i]!), { seq: i + 1, prev: sha256(step.lines[i - 1]!).toString('hex') })
  }
  t.same([step.records, step.checkpoints], [2, 1])
  t.equal(step.lastCheckpoint, step.lines[0])
  t.match(step.state, { seq: 3, head: sha256(step.lines[2]!).toString('hex'), since: 2, recordsSinceCheckpoint: 2 })
  t.equal(step.state.marks.length, 2, 'the two records wait for the next checkpoint to cover them')
})

t.test('a checkpoint every N records, signed, whose marks name each line it covers', async (t) => {
  const items = Array.from({ length: 7 }, (_, i) => ({ kind: 'record' as const, body: body(i) }))
  const step = chainBatch(newChain(), items, ctx())
  const checkpoints = step.lines.map(parse).filter((l) => l.type === 'checkpoint') as unknown as CheckpointLine[]
  t.same(checkpoints.map((c) => c.seq), [4, 8], 'after records 3 and 6')
  t.ok(checkpoints.every((c) => checkpointSignatureValid(c, testKey.publicKey)), 'signed with the key')
  t.same(decodeMarks(checkpoints[1]!.marks), step.lines.slice(4, 7).map((l) => sha256(l).subarray(0, 6).toString('hex')), 'marks: the lines since the last checkpoint')
  t.equal(step.state.recordsSinceCheckpoint, 1)
})

t.test('a timer\'s checkpoint with nothing new is skipped; a recovered or shutdown checkpoint is always written', async (t) => {
  const idle = chainBatch(newChain(), [{ kind: 'checkpoint', event: 'interval' }], ctx())
  t.same(idle.lines, [], 'nothing to cover: no line')
  const always = chainBatch(newChain(), [{ kind: 'checkpoint', event: 'recovered' }, { kind: 'checkpoint', event: 'shutdown' }], ctx())
  t.same(always.lines.map((l) => parse(l).event), ['recovered', 'shutdown'])
})

t.test('resumeChain continues exactly where the lines on disk end', async (t) => {
  const first = chainBatch(newChain(), Array.from({ length: 5 }, (_, i) => ({ kind: 'record' as const, body: body(i) })), ctx({ opensFile: true }))
  const resumed = resumeChain(first.lines.map((l) => Buffer.from(l)))
  t.same(resumed, first.state, 'the same state as the writer held')
  const next = chainBatch(resumed!, [{ kind: 'record', body: body(9) }], ctx())
  t.equal(parse(next.lines[0]!).prev, sha256(first.lines[first.lines.length - 1]!).toString('hex'))
  t.equal(resumeChain([Buffer.from(first.lines[0]!), Buffer.from('not a chained line')]), null, 'a last line that is not chained: no guessing')
  const noCheckpoint = resumeChain([Buffer.from(first.lines[1]!), Buffer.from(first.lines[2]!)])
  t.match(noCheckpoint, { seq: 3, since: 2, recordsSinceCheckpoint: 2 }, 'a file without a checkpoint: covered from its first line')
})
