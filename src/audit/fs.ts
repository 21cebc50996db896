// The audit writer's file-system calls are the durable log's (src/durable/fs.ts): one
// interface, so tests inject failures (a full disk, a revoked permission, a closed
// descriptor) into both logs the same way. The names here keep the audit stage's imports.

export type { DurableFileHandle as AuditFileHandle, DurableFs as AuditFs } from '../durable/fs.ts'
export { nodeDurableFs as nodeAuditFs } from '../durable/fs.ts'
