// Token buckets per key: a burst passes, then one token per 1/perSecond; the wait until the
// next token is reported; keys are independent; past maxKeys the least recently seen key is
// forgotten (and comes back full); a charge takes tokens it may not have, and the debt (never
// more than one burst) is paid back at the refill rate before the next take passes.
import t from 'tap'
import { TokenBuckets } from '../../src/transport/token-buckets.ts'

t.test('a burst, then the refill rate, with the wait until the next token', async (t) => {
  const b = new TokenBuckets({ perSecond: 2, burst: 3, maxKeys: 10 })
  t.same([b.take('a', 0), b.take('a', 0), b.take('a', 0)], [0, 0, 0], 'the burst passes')
  t.equal(b.take('a', 0), 500, 'the fourth waits half a second (2 a second)')
  t.equal(b.take('a', 250), 250, 'a quarter second later, a quarter second more')
  t.equal(b.take('a', 500), 0, 'then one token is there')
  t.equal(b.take('b', 500), 0, 'another key has its own bucket')
})

t.test('past maxKeys the least recently seen key is forgotten, and comes back with a full bucket', async (t) => {
  let forgotten = 0
  const b = new TokenBuckets({ perSecond: 1, burst: 1, maxKeys: 2, onForget: () => forgotten++ })
  b.take('a', 0)
  b.take('b', 0)
  t.ok(b.take('a', 0) > 0, 'a is empty')
  b.take('c', 0) // forgets b, the least recently seen
  t.equal(forgotten, 1)
  t.equal(b.size, 2)
  t.equal(b.take('b', 0), 0, 'b comes back full')
  t.equal(forgotten, 2, 'and pushed a out')
  t.equal(b.take('a', 0), 0, 'so a comes back full too')
})

t.test('a charge puts the bucket into debt, at most one burst deep, paid back at the refill rate', async (t) => {
  const b = new TokenBuckets({ perSecond: 10, burst: 5, maxKeys: 10 })
  b.charge('a', 0, 7)
  t.equal(b.take('a', 0), 300, 'from 5 tokens, 7 charged leaves -2: 3 tokens to wait for, 300 ms')
  t.equal(b.take('a', 300), 0, 'then the take passes')
  b.charge('a', 300, 1000)
  t.equal(b.take('a', 300), 600, 'a huge charge stops at one burst below empty: 6 tokens, 600 ms')
  t.equal(b.take('b', 300), 0, 'other keys are not charged')
})
