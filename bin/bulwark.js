#!/usr/bin/env node
// Entry point for `npx bulwark`. Bulwark's sources are TypeScript run by Node.js 24's type
// stripping; older runtimes cannot load them, so say so plainly instead of a stack trace.
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  console.error(`bulwark needs Node.js 24 or later; this is ${process.version}. Run it through npm (npm start, npx bulwark), which uses the Node.js 24 that npm ci installed.`)
  process.exit(1)
}
await import('../src/cli.ts')
