// A first gRPC request to a running Bulwark (`npm start` in this folder), with the
// development PKI and a development token, through inference.GRPCInferenceService: the server
// metadata, mnist's configuration (Triton's model configuration extension), and one inference
// on the handwritten 7 of the README's first REST request.
//
//   npm run example:grpc [-- --address 127.0.0.1:8444 --server-name localhost --dir .bulwark/dev --token JWT]
//
// The client is @grpc/grpc-js with the .proto files under proto/ (any OIP v2 gRPC client
// works the same way: Triton's tritonclient.grpc, KServe's, grpcurl with -proto). Without
// --token (or BULWARK_TOKEN) it mints a development token as `npx bulwark token` does.

import path from 'node:path'
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import * as grpc from '@grpc/grpc-js'
import { defaultConfig } from '../src/config/load.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER } from '../src/config/security.ts'
import { realDeps } from '../src/deps.ts'
import { loadSigningKey, mintToken } from '../src/dev/mint-token.ts'
import { devPkiPaths } from '../src/dev/pki.ts'
import { devScopes } from '../src/dev/setup.ts'
import { inferenceServiceClient } from '../src/transport/grpc.ts'

const { values } = parseArgs({
  options: {
    address: { type: 'string', default: '127.0.0.1:8444' },
    // The name the server certificate is checked against (the development certificate's: localhost).
    'server-name': { type: 'string', default: 'localhost' },
    dir: { type: 'string', default: DEV_DIR },
    token: { type: 'string' },
  },
  strict: true,
})
const cwd = process.cwd()
const { files } = devPkiPaths(path.resolve(cwd, values.dir))
const [ca, cert, key] = await Promise.all([files.ca, files.clientCert, files.clientKey].map((f) => readFile(f)))
const token =
  values.token ??
  process.env.BULWARK_TOKEN ??
  (await mintToken(await loadSigningKey(files.jwtKey, files.jwks), { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: 'dev', scopes: await devScopes(defaultConfig(cwd).config, cwd), ttlSeconds: 300 }, realDeps))

const GRPCInferenceService = inferenceServiceClient()
const client = new GRPCInferenceService(values.address, grpc.credentials.createSsl(ca!, key!, cert!), { 'grpc.ssl_target_name_override': values['server-name'] }) as unknown as Record<string, (req: unknown, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: any) => void) => void>
const metadata = new grpc.Metadata()
metadata.set('authorization', `Bearer ${token}`)

function call(method: string, request: unknown): Promise<any> {
  return new Promise((resolve, reject) => client[method]!(request, metadata, (err, res) => (err ? reject(err) : resolve(res))))
}

try {
  const server = await call('ServerMetadata', {})
  console.log(`server: ${server.name} ${server.version}, extensions: ${server.extensions.join(', ')}`)
  const { config } = await call('ModelConfig', { name: 'mnist', version: '' })
  console.log(`mnist: max_batch_size ${config.max_batch_size}, input ${config.input[0].name} ${config.input[0].data_type} dims [${config.input[0].dims.join(', ')}]`)
  const digit = JSON.parse(await readFile(path.resolve(import.meta.dirname, '../test/fixtures/mnist-request.json'), 'utf8')) as { inputs: { data: number[] }[] }
  const answer = await call('ModelInfer', {
    model_name: 'mnist',
    id: 'first-grpc-request',
    inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], contents: { fp32_contents: digit.inputs[0]!.data } }],
  })
  for (const o of answer.outputs) {
    const values = Object.values(o.contents ?? {}).find((v) => Array.isArray(v) && v.length > 0) as unknown[] | undefined
    console.log(`answer ${answer.id}: ${o.name} ${o.datatype} [${o.shape.join(', ')}] = [${values?.join(', ')}]`)
  }
  // Each parameter has one of its fields set; proto-loader names it in parameter_choice.
  for (const [k, v] of Object.entries(answer.parameters ?? {}) as [string, Record<string, unknown> & { parameter_choice: string }][]) {
    console.log(`  ${k}: ${String(Object.entries(v).find(([field]) => field === v.parameter_choice)?.[1])}`)
  }
} catch (err) {
  const e = err as grpc.ServiceError
  console.error(`refused: ${grpc.status[e.code]} (${e.metadata?.get('bulwark-code')[0] ?? 'no bulwark-code'}): ${e.details}`)
  process.exitCode = 1
} finally {
  ;(client as unknown as grpc.Client).close()
}
