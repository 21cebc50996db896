// LruMap: at most `max` keys, the least recently used forgotten first (get and set make a key
// the most recent, peek and has do not), onEvict told of each key forgotten to make room and
// of no other, and delete, clear and oldestKey keep the order consistent. A sequence of random
// operations is checked against a plain reference model.
import t from 'tap'
import { LruMap } from '../../src/state/lru.ts'

t.test('the least recently used key goes first; get and set refresh, peek and has do not', async (t) => {
  const evicted: [string, number][] = []
  const m = new LruMap<number>(3, (k, v) => evicted.push([k, v]))
  m.set('a', 1)
  m.set('b', 2)
  m.set('c', 3)
  t.equal(m.oldestKey(), 'a')
  t.equal(m.get('a'), 1, 'get returns the value')
  t.equal(m.peek('b'), 2)
  t.ok(m.has('b'))
  m.set('d', 4) // b is now the least recently used: peek and has did not refresh it
  t.same(evicted, [['b', 2]], 'b evicted, with its value')
  m.set('c', 30) // an update refreshes c
  m.set('e', 5)
  t.same(evicted, [['b', 2], ['a', 1]], 'then a')
  t.equal(m.size, 3)
  t.same(['c', 'd', 'e'].map((k) => m.peek(k)), [30, 4, 5])
  t.equal(m.oldestKey(), 'd')
})

t.test('delete and clear forget without telling onEvict; the order stays consistent', async (t) => {
  let told = 0
  const m = new LruMap<string>(2, () => told++)
  m.set('x', 'X')
  m.set('y', 'Y')
  t.equal(m.delete('x'), true)
  t.equal(m.delete('x'), false, 'a second delete finds nothing')
  t.equal(m.oldestKey(), 'y')
  m.set('z', 'Z')
  t.equal(told, 0, 'room was made by delete, nothing evicted')
  m.clear()
  t.equal(m.size, 0)
  t.equal(m.oldestKey(), undefined)
  m.set('w', 'W')
  t.equal(m.oldestKey(), 'w', 'usable after clear')
  t.equal(told, 0)
  t.throws(() => new LruMap(0), /at least one key/)
})

t.test('random operations agree with a reference model', async (t) => {
  let seed = 7
  const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n)
  const max = 16
  const evicted: string[] = []
  const m = new LruMap<number>(max, (k) => evicted.push(k))
  let model: [string, number][] = [] // oldest first
  const modelEvicted: string[] = []
  const mismatches: string[] = []
  for (let i = 0; i < 5000; i++) {
    const key = `k${rand(64)}`
    const op = rand(20) // get 5, set 9, delete 2, peek 4 in 20
    const at = model.findIndex(([k]) => k === key)
    if (op < 5) {
      if (at >= 0) model.push(model.splice(at, 1)[0]!)
      const want = at >= 0 ? model[model.length - 1]![1] : undefined
      if (m.get(key) !== want) mismatches.push(`get ${key} at ${i}`)
    } else if (op < 14) {
      if (at >= 0) model.splice(at, 1)
      model.push([key, i])
      if (model.length > max) modelEvicted.push(model.shift()![0])
      m.set(key, i)
    } else if (op < 16) {
      if (at >= 0) model.splice(at, 1)
      if (m.delete(key) !== at >= 0) mismatches.push(`delete ${key} at ${i}`)
    } else if (m.peek(key) !== (at >= 0 ? model[at]![1] : undefined)) mismatches.push(`peek ${key} at ${i}`)
    if (m.size !== model.length || m.oldestKey() !== model[0]?.[0]) mismatches.push(`order after ${i}: size ${m.size} vs ${model.length}, oldest ${m.oldestKey()} vs ${model[0]?.[0]}`)
  }
  t.same(mismatches.slice(0, 5), [], 'every get, peek, delete, size and oldest key as the model says')
  t.same(evicted, modelEvicted, 'the same keys evicted, in the same order')
  t.ok(evicted.length > 100, `evictions exercised (${evicted.length})`)
})
