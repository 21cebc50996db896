// Reading a line log back after a crash. Pure: bytes in, lines and verdicts out.
//
// A log is appended to, one write per batch, so a crash can leave only its end damaged: bytes
// after the last newline (a write cut short), or whole lines that never reached the disk
// intact (a file extended but not written: zeros). A damaged line FOLLOWED by an intact one
// is not a crash's doing: that is corruption, and the log's reader must not guess past it.

/** Splits file bytes into complete lines and a torn tail (bytes after the last newline). */
export function splitLines(buf: Buffer): { lines: Buffer[]; torn: Buffer | null } {
  const lines: Buffer[] = []
  let start = 0
  for (;;) {
    const nl = buf.indexOf(0x0a, start)
    if (nl === -1) break
    lines.push(buf.subarray(start, nl))
    start = nl + 1
  }
  return { lines, torn: start < buf.length ? buf.subarray(start) : null }
}

export type Replay<T> =
  | {
      ok: true
      /** The intact lines, parsed, with their 0-based line numbers. */
      values: { index: number; value: T }[]
      /** Bytes of the intact lines and their newlines: where the next append goes. */
      intactBytes: number
      /** Damaged lines at the end (a torn tail counts as one). */
      droppedLines: number
    }
  | {
      ok: false
      /** 0-based: the first damaged line, which intact lines follow. */
      firstBad: number
    }

/**
 * Parses every complete line; `parse` returns null for a damaged one. Damaged lines at the end
 * are dropped (a crash's tail); a damaged line followed by an intact one makes the replay fail.
 */
export function replayLines<T>(buf: Buffer, parse: (line: Buffer, index: number) => T | null): Replay<T> {
  // Line by line, each line's view dropped once parsed: a million views held at once (a
  // large privacy journal) made the garbage collector the replay's largest cost.
  const values: { index: number; value: T }[] = []
  let firstBad = -1
  let intactBytes = 0
  let i = 0
  let start = 0
  for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a, start), i++) {
    const value = parse(buf.subarray(start, nl), i)
    if (value === null) {
      if (firstBad < 0) firstBad = i
    } else {
      if (firstBad >= 0) return { ok: false, firstBad }
      values.push({ index: i, value })
      intactBytes += nl - start + 1
    }
    start = nl + 1
  }
  const torn = start < buf.length
  const droppedLines = (firstBad >= 0 ? i - firstBad : 0) + (torn ? 1 : 0)
  return { ok: true, values, intactBytes, droppedLines }
}
