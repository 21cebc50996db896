// Reading a line log back after a crash: a torn tail is dropped, damage followed by intact
// lines is corruption. Pure functions, so the cases are a table.

import t from 'tap'
import { replayLines, splitLines } from '../../src/durable/lines.ts'

t.test('splitLines: complete lines, and the bytes after the last newline as the torn tail', async (t) => {
  const cases: [string, string[], string | null][] = [
    ['', [], null],
    ['a\n', ['a'], null],
    ['a\nb\n', ['a', 'b'], null],
    ['a\nb', ['a'], 'b'],
    ['\n\n', ['', ''], null],
    ['half a line', [], 'half a line'],
  ]
  for (const [text, lines, torn] of cases) {
    const got = splitLines(Buffer.from(text))
    t.same(
      { lines: got.lines.map(String), torn: got.torn && String(got.torn) },
      { lines, torn },
      JSON.stringify(text),
    )
  }
})

const digits = (line: Buffer) => (/^\d+$/.test(String(line)) ? Number(String(line)) : null)

t.test("replayLines: damaged lines at the end are a crash's tail and dropped; damage before intact lines is corruption", async (t) => {
  const cases: { name: string; text: string; values?: number[]; dropped?: number; intactBytes?: number; firstBad?: number }[] = [
    { name: 'empty', text: '', values: [], dropped: 0, intactBytes: 0 },
    { name: 'intact', text: '1\n22\n', values: [1, 22], dropped: 0, intactBytes: 5 },
    { name: 'a write cut short', text: '1\n22\n33', values: [1, 22], dropped: 1, intactBytes: 5 },
    { name: 'zeros where a write never landed', text: '1\n\0\0\0\n', values: [1], dropped: 1, intactBytes: 2 },
    { name: 'several damaged lines at the end, and a torn one', text: '1\nx\ny\nz', values: [1], dropped: 3, intactBytes: 2 },
    { name: 'damage followed by an intact line', text: '1\nx\n3\n', firstBad: 1 },
    { name: 'damage at the start followed by intact lines', text: 'x\n2\n', firstBad: 0 },
  ]
  for (const c of cases) {
    const r = replayLines(Buffer.from(c.text), digits)
    if (c.firstBad !== undefined) t.same(r, { ok: false, firstBad: c.firstBad }, c.name)
    else t.same(r, { ok: true, values: c.values!.map((value, i) => ({ index: i, value })), droppedLines: c.dropped, intactBytes: c.intactBytes }, c.name)
  }
})
