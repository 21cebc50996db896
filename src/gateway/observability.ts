// Observability: the metric registry every subsystem adds its counters to, and the request
// tracing. Built first, so the others can declare their metrics as they build.

import { trace, type TracerProvider } from '@opentelemetry/api'
import type { MetricReader } from '@opentelemetry/sdk-metrics'
import type { TelemetryConfig } from '../config/scaleout.ts'
import { GatewayMetrics, type QueueReading } from '../telemetry/metrics.ts'
import { createPipelineTracing, type PipelineTracing } from '../telemetry/tracing.ts'

export interface Observability {
  metrics: GatewayMetrics
  tracing: PipelineTracing
  tracerProvider: TracerProvider
}

export function buildObservability(
  config: TelemetryConfig,
  options: { tracerProvider?: TracerProvider | undefined; metricReaders?: MetricReader[] | undefined },
  queues: QueueReading,
): Observability {
  const metrics = new GatewayMetrics(queues, { readers: options.metricReaders ?? [], maxSeriesPerMetric: config.maxSeriesPerMetric })
  // The global provider is the one src/cli.ts sets up from the OTEL_* variables (no-op otherwise).
  const tracerProvider = options.tracerProvider ?? trace.getTracerProvider()
  const tracing = createPipelineTracing(tracerProvider, { acceptTraceContext: config.acceptTraceContext })
  return { metrics, tracing, tracerProvider }
}
