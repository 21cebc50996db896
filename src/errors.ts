// The one catalogue of error codes. Every refusal the gateway sends carries one of these
// stable codes; clients match on the code, never on the message. The precise reason (which
// check failed, with what value) goes to the server log and the audit record only, so a
// refusal teaches an attacker nothing that the code does not already say.
//
// The status table is a Record over the code union: a new code does not compile until it
// has a status, and the error catalogue's test fails until docs/errors.md documents it.

export const errorStatus = {
  // 400: the request itself is wrong; fixing it is the client's job.
  bad_request: 400,
  invalid_json: 400,
  invalid_binary_header: 400,
  missing_input: 400,
  unknown_input: 400,
  unknown_output: 400,
  datatype_mismatch: 400,
  shape_mismatch: 400,
  data_length_mismatch: 400,
  value_out_of_range: 400,
  non_finite_value: 400,
  batch_too_large: 400,
  // 401/403: who is calling, and may they.
  unauthenticated: 401,
  forbidden: 403,
  attack_suspected: 403,
  // 404: what was asked for does not exist.
  not_found: 404,
  model_not_found: 404,
  version_not_found: 404,
  // 408: the request did not arrive in time (a stalled upload is cut off).
  request_timeout: 408,
  // 413/415: the body is too big or of a type the protocol does not define.
  payload_too_large: 413,
  unsupported_media_type: 415,
  // 422: well-formed, but the screening stage judged it adversarial.
  suspicious_input: 422,
  // 429: too much, too often.
  rate_limited: 429,
  client_rate_limited: 429,
  privacy_budget_exhausted: 429,
  // 499 (nginx's "client closed request"): the client went away before the answer; nobody
  // reads it, but the log and the audit record say what happened, without a 5xx.
  client_closed_request: 499,
  // 5xx: the gateway cannot serve right now; retrying later may work.
  internal: 500,
  model_not_ready: 503,
  queue_full: 503,
  overloaded: 503,
  worker_failed: 503,
  upstream_unavailable: 503,
  state_unavailable: 503,
  audit_unavailable: 503,
  shutting_down: 503,
  deadline_exceeded: 504,
} as const satisfies Record<string, number>

export type ErrorCode = keyof typeof errorStatus

/** The gRPC status codes the gRPC transport answers with (names as in grpc's status.proto). */
export type GrpcStatusName =
  | 'CANCELLED'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'UNAUTHENTICATED'

/**
 * Each code's gRPC status, next to its HTTP status (docs/errors.md has both columns); the
 * stable code itself travels in the `bulwark-code` trailing metadata. A Record over the
 * codes, so a new code does not compile until it has one.
 */
export const errorGrpcStatus: Record<ErrorCode, GrpcStatusName> = {
  bad_request: 'INVALID_ARGUMENT',
  invalid_json: 'INVALID_ARGUMENT',
  invalid_binary_header: 'INVALID_ARGUMENT',
  missing_input: 'INVALID_ARGUMENT',
  unknown_input: 'INVALID_ARGUMENT',
  unknown_output: 'INVALID_ARGUMENT',
  datatype_mismatch: 'INVALID_ARGUMENT',
  shape_mismatch: 'INVALID_ARGUMENT',
  data_length_mismatch: 'INVALID_ARGUMENT',
  value_out_of_range: 'INVALID_ARGUMENT',
  non_finite_value: 'INVALID_ARGUMENT',
  batch_too_large: 'INVALID_ARGUMENT',
  unauthenticated: 'UNAUTHENTICATED',
  forbidden: 'PERMISSION_DENIED',
  attack_suspected: 'PERMISSION_DENIED',
  not_found: 'NOT_FOUND',
  model_not_found: 'NOT_FOUND',
  version_not_found: 'NOT_FOUND',
  request_timeout: 'DEADLINE_EXCEEDED',
  // gRPC's own answer to a message over the size limit.
  payload_too_large: 'RESOURCE_EXHAUSTED',
  unsupported_media_type: 'INVALID_ARGUMENT',
  // Well-formed but refused for its content: not worth retrying as sent.
  suspicious_input: 'INVALID_ARGUMENT',
  rate_limited: 'RESOURCE_EXHAUSTED',
  client_rate_limited: 'RESOURCE_EXHAUSTED',
  privacy_budget_exhausted: 'RESOURCE_EXHAUSTED',
  client_closed_request: 'CANCELLED',
  internal: 'INTERNAL',
  model_not_ready: 'UNAVAILABLE',
  queue_full: 'UNAVAILABLE',
  overloaded: 'UNAVAILABLE',
  worker_failed: 'UNAVAILABLE',
  upstream_unavailable: 'UNAVAILABLE',
  state_unavailable: 'UNAVAILABLE',
  audit_unavailable: 'UNAVAILABLE',
  shutting_down: 'UNAVAILABLE',
  deadline_exceeded: 'DEADLINE_EXCEEDED',
}

export const errorCodes = Object.keys(errorStatus) as ErrorCode[]

export interface BulwarkErrorOptions {
  /** Precise, operator-facing reason (log and audit only; never sent to the client). */
  reason?: string
  /** Extra response headers, e.g. Retry-After. */
  headers?: Record<string, string>
  /** The error from a dependency that this one translates. */
  cause?: unknown
}

/**
 * The only error class in Bulwark. `message` is what the client sees: short, says what is
 * wrong and what to do. `reason` is the precise cause for the operator.
 */
export class BulwarkError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly reason: string
  readonly headers: Readonly<Record<string, string>>

  constructor(code: ErrorCode, message: string, options: BulwarkErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'BulwarkError'
    this.code = code
    this.status = errorStatus[code]
    this.reason = options.reason ?? message
    this.headers = options.headers ?? {}
  }
}

export function isBulwarkError(value: unknown): value is BulwarkError {
  return value instanceof BulwarkError
}

/** The body OIP v2 specifies for errors, plus our stable code. */
export function errorBody(err: BulwarkError): { error: string; code: ErrorCode } {
  return { error: err.message, code: err.code }
}
