// OpenTelemetry set-up for `bulwark serve`, from the standard OTEL_* environment variables
// (src/cli.ts reads the environment and passes it in; the SDK's exporters read their own
// OTEL_EXPORTER_OTLP_* variables).
//
// Tracing export is off by default: the Node SDK starts only when OTEL_TRACES_EXPORTER names
// an exporter (otlp, zipkin, console) or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) without OTEL_TRACES_EXPORTER=none. It then registers
// the tracer provider with the sampler of OTEL_TRACES_SAMPLER, and nothing else: no
// auto-instrumentation (the gateway makes its own spans), no SDK metrics or logs. Metrics
// always go to the Prometheus endpoint of the admin listener; OTEL_METRICS_EXPORTER=otlp adds
// an OTLP exporter (every OTEL_METRIC_EXPORT_INTERVAL ms, default 60000). OTEL_SDK_DISABLED=true
// turns all of it off. The SDK is loaded only when needed (it takes a while to import).

import type { MetricReader } from '@opentelemetry/sdk-metrics'

export interface Telemetry {
  /** Whether spans are exported (the SDK runs). */
  readonly tracing: boolean
  /** Readers for the gateway's metrics besides Prometheus (buildGateway's telemetry.metricReaders). */
  readonly metricReaders: MetricReader[]
  /** Flushes and stops the exporters. */
  shutdown(): Promise<void>
}

type Env = Readonly<Record<string, string | undefined>>

const list = (v: string | undefined) => (v ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '' && s !== 'null')

/** Whether the environment asks for trace export. */
export function tracingRequested(env: Env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false
  const exporters = list(env.OTEL_TRACES_EXPORTER)
  if (exporters.length > 0) return !(exporters.length === 1 && exporters[0] === 'none')
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
}

export async function startTelemetry(env: Env): Promise<Telemetry> {
  const disabled = env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true'
  const stops: (() => Promise<void>)[] = []
  let tracing = false
  if (tracingRequested(env)) {
    const { NodeSDK } = await import('@opentelemetry/sdk-node')
    const sdk = new NodeSDK({
      // OTEL_SERVICE_NAME wins when set (the SDK's env detector reads it).
      ...(env.OTEL_SERVICE_NAME ? {} : { serviceName: 'bulwark' }),
      instrumentations: [],
      metricReaders: [],
      logRecordProcessors: [],
    })
    sdk.start()
    tracing = true
    stops.push(() => sdk.shutdown())
  }
  const metricReaders: MetricReader[] = []
  if (!disabled && list(env.OTEL_METRICS_EXPORTER).includes('otlp')) {
    const [{ OTLPMetricExporter }, { PeriodicExportingMetricReader }] = await Promise.all([
      import('@opentelemetry/exporter-metrics-otlp-http'),
      import('@opentelemetry/sdk-metrics'),
    ])
    const interval = Number(env.OTEL_METRIC_EXPORT_INTERVAL ?? 60_000)
    metricReaders.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter(), exportIntervalMillis: Number.isFinite(interval) && interval >= 1000 ? interval : 60_000 }))
  }
  return {
    tracing,
    metricReaders,
    async shutdown() {
      await Promise.all(stops.map((s) => s().catch(() => {})))
    },
  }
}
