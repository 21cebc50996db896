// Builds a gateway over the bundled models with the front door off, for tests of the
// serving core itself (the front door has its own tests, one per link, under test/stages/).

import { buildConfig } from '../../src/config/load.ts'
import { realDeps } from '../../src/deps.ts'
import { buildGateway, type Gateway } from '../../src/server.ts'
import { noDefences } from '../../kit/gateway-process.ts'
import { repoRoot } from '../../kit/paths.ts'

/** Every defence off, so only the serving core is exercised. */
export const coreOnly = noDefences

export async function coreGateway(raw: Record<string, unknown> = {}, baseDir = repoRoot): Promise<Gateway> {
  const config = buildConfig({ ...coreOnly, ...raw }, 'test config')
  const gateway = await buildGateway({ config, baseDir, source: 'test config' }, realDeps, { logLevel: 'silent' })
  await gateway.load()
  return gateway
}
