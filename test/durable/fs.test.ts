// Whether a process still runs, read from /proc: what a stale lock is judged by.

import t from 'tap'
import { existsSync } from 'node:fs'
import { parseProcStat, procfsLiveness } from '../../src/durable/fs.ts'
import { DEAD_PID } from './helpers.ts'

t.test('parseProcStat: state and start time, also when the command name holds spaces and parentheses', async (t) => {
  const tail = ' S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21'
  t.same(parseProcStat(`123 (node)${tail}`), { state: 'S', start: '424242' })
  t.same(parseProcStat(`123 (a) (b c)${tail}`), { state: 'S', start: '424242' })
  t.equal(parseProcStat('garbage'), null)
})

t.test('procfsLiveness: this process, a pid that cannot exist, a pid reused by a later process', { skip: !existsSync('/proc/self/stat') && 'needs /proc' }, async (t) => {
  const me = await procfsLiveness.self()
  t.equal(me?.pid, process.pid)
  t.match(me?.start, /^\d+$/)
  t.equal(await procfsLiveness.isRunning(me!), true, 'this process runs')
  t.equal(await procfsLiveness.isRunning({ pid: process.pid, start: null }), true, 'by pid alone too')
  t.equal(await procfsLiveness.isRunning({ pid: DEAD_PID, start: null }), false, 'no such process')
  t.equal(await procfsLiveness.isRunning({ pid: process.pid, start: '1' }), false, 'the pid now names a process started at another time')
})
