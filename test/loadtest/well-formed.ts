// A strict well-formedness check for the bench report: every tag closed in order (HTML's
// void <meta> aside), every attribute quoted, no stray '<', '>' or '&' in text, and nothing
// that would load from elsewhere (no script, no src or href, no URL in an attribute but the
// SVG namespace, no url() or @import in the CSS).
// Stricter than a browser, which repairs what it can: a page that passes opens the same
// everywhere.

const VOID = new Set(['meta'])
const TAG = /<(\/?)([a-zA-Z][a-zA-Z0-9:-]*)((?:\s+[a-zA-Z][a-zA-Z0-9:-]*="[^"<>]*")*)\s*(\/?)>/g

/** The problems found, empty when the page is well formed. */
export function wellFormedProblems(html: string): string[] {
  const problems: string[] = []
  const body = html.replace(/^<!DOCTYPE html>\s*/, '')
  const stack: string[] = []
  let last = 0
  for (const m of body.matchAll(TAG)) {
    const text = body.slice(last, m.index)
    if (/[<>]/.test(text)) problems.push(`stray < or > in text before offset ${m.index}: ${JSON.stringify(text.slice(0, 60))}`)
    if (/&(?!(?:amp|lt|gt|quot|#39);)/.test(text)) problems.push(`a bare & in text before offset ${m.index}`)
    last = m.index + m[0].length
    const [, closing, name, , selfClosing] = m
    if (closing) {
      const open = stack.pop()
      if (open !== name) problems.push(`</${name}> closes <${open ?? 'nothing'}> at offset ${m.index}`)
    } else if (!selfClosing && !VOID.has(name!)) stack.push(name!)
  }
  if (/[<>]/.test(body.slice(last))) problems.push('stray < or > after the last tag')
  if (stack.length > 0) problems.push(`never closed: ${stack.join(', ')}`)
  if (/<script|\s(?:src|href)=/i.test(html)) problems.push('a script or a src/href attribute')
  // A URL in text is only shown; in an attribute or in CSS it could be fetched.
  const fetched = [...html.matchAll(/([a-zA-Z:-]+)="([^"]*:\/\/[^"]*)"/g)].filter((a) => a[1] !== 'xmlns').map((a) => a[0])
  if (/url\(|@import/.test(html)) fetched.push('url() or @import in CSS')
  if (fetched.length > 0) problems.push(`something that loads from elsewhere: ${fetched.join(' ')}`)
  return problems
}
