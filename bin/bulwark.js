#!/usr/bin/env node
// Entry point for `npx bulwark`. Bulwark's sources are TypeScript run by Node.js 24's type
// stripping; older runtimes cannot load them, so say so plainly instead of a stack trace.
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  console.error(`bulwark needs Node.js 24 or later; this is ${process.version}. Run it through npm (npm start, npx bulwark), which uses the Node.js 24 that npm ci installed.`)
  process.exit(1)
}
// Request bodies arrive as fresh Buffers (node:http copies each chunk), about 110 KB per
// image-sized request: outside V8's heap. By default V8 starts a full mark-compact for every
// 64 MB of such external memory, several a second under load, each marking the whole heap
// (measured: 42 full GCs in 4 s for a plain node:http server taking 110 KB bodies). Counting
// external memory in V8's global heap limit instead spaces them by the heap's own growth
// (6 in the same run), and gave the gateway 12% more ocr-cls items/s in paired rounds.
// Memory stays bounded: the limit still triggers full GCs. Set before anything allocates;
// an explicit --[no-]external-memory-accounted-in-global-limit on the command line wins.
if (!process.execArgv.some((a) => a.includes('external-memory-accounted-in-global-limit'))) {
  const v8 = await import('node:v8')
  v8.setFlagsFromString('--external-memory-accounted-in-global-limit')
}
await import('../src/cli.ts')
