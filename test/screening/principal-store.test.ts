import t from 'tap'
import { PrincipalStore } from '../../src/screening/principal-store.ts'

t.test('the least recently used principal is evicted first, by count and by units', async (t) => {
  const s = new PrincipalStore<{ n: number }>({ maxPrincipals: 3, maxUnits: 10, create: () => ({ n: 0 }), units: (x) => x.n })
  for (const k of ['a', 'b', 'c']) s.use(k)
  s.use('a') // a is now the most recent
  s.use('d') // evicts b
  t.notOk(s.has('b'))
  t.ok(s.has('a') && s.has('c') && s.has('d'))
  s.use('c').n = 6
  s.settle('c')
  s.use('d').n = 6
  s.settle('d') // 12 units: evicts a (0 units, oldest) then c
  t.same([s.has('a'), s.has('c'), s.has('d')], [false, false, true])
  t.equal(s.units, 6)
  t.equal(s.evictions, 3)
})

t.test('a principal is never evicted by its own growth', async (t) => {
  const s = new PrincipalStore<{ n: number }>({ maxPrincipals: 2, maxUnits: 5, create: () => ({ n: 0 }), units: (x) => x.n })
  s.use('big').n = 50
  s.settle('big')
  t.ok(s.has('big'))
})
