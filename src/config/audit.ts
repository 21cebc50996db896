// The `audit:` slice of bulwark.yaml: where the audit trail is written, how durably, when
// files rotate and are removed, how repeated refusals are counted, when the disk counts as
// nearly full, and how checkpoints are signed. Owned by src/audit and the
// audit-log stage. Relative paths are resolved from the config file's folder (the working
// directory for the embedded default).

import { Type, type Static } from '@sinclair/typebox'

/** Where the development audit signing key is created when it is missing. */
export const DEV_AUDIT_KEY = '.bulwark/dev/audit-key.pem'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const DAY_MS = 24 * 3_600_000

export const AuditConfig = Type.Object(
  {
    /** Off: no record is written and no request waits for the disk. Only for the benchmark
     *  baseline; a gateway without its audit trail cannot answer "who asked what". */
    enabled: Type.Boolean({ default: true }),
    /** Folder of the audit files (created, mode 0700). One gateway process per folder. */
    directory: Type.String({ minLength: 1, default: '.bulwark/audit' }),
    /** strict: a response leaves only after its record is on disk (write + fdatasync, many
     *  records per sync). relaxed: a response leaves after its record is written to the OS
     *  (survives a killed process, not a power cut) and the file is synced every
     *  relaxedSyncIntervalMs: a power cut or kernel crash can lose that window. */
    durability: Type.Union([Type.Literal('strict'), Type.Literal('relaxed')], { default: 'strict' }),
    /** With durability relaxed: how often the file is synced; the loss window on a power cut. */
    relaxedSyncIntervalMs: Type.Integer({ minimum: 1, maximum: 60_000, default: 200 }),
    rotation: Type.Object(
      {
        /** Start a new file when the current one would grow past this. */
        maxFileBytes: Type.Integer({ minimum: 4096, maximum: 4096 * MiB, default: 64 * MiB }),
        /** Start a new file when the current one is older than this; 0 = never by age. */
        maxFileAgeMs: Type.Integer({ minimum: 0, maximum: 366 * 24 * 3_600_000, default: 24 * 3_600_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
    retention: Type.Object(
      {
        /** Delete the oldest files while all files together exceed this; 0 = no limit. 10 GiB
         *  holds about ten million records (0.7 to 1.2 KB each): months of a busy gateway's
         *  answers. Unlimited is not a safe default: once the disk is full every request is
         *  refused (503 audit_unavailable), so a client that can fill the disk can stop the
         *  gateway. Keep the trail for longer off the host (mirror: stdout, a log shipper). */
        maxTotalBytes: Type.Integer({ minimum: 0, default: 10 * GiB }),
        /** Delete files whose newest record is older than this; 0 = no limit. 90 days: the
         *  span audit rules commonly ask to keep at hand (PCI DSS 10.5.1: three months
         *  immediately available); older records belong in the off-host archive. */
        maxAgeMs: Type.Integer({ minimum: 0, default: 90 * DAY_MS }),
      },
      { additionalProperties: false, default: {} },
    ),
    aggregation: Type.Object(
      {
        /** Off: every refusal has a record of its own, synced before its answer leaves. */
        enabled: Type.Boolean({ default: true }),
        /** A refusal identical to one written in full less than this long before (same
         *  client, status, code, stage, method, route, principal) is counted, not written; one
         *  "aggregate" record with the count is written when the window closes or at
         *  shutdown. What a crash loses: the counts of at most this long (each run's first
         *  refusal is on disk). 60 s: a junk flood costs two records a minute per kind. */
        windowMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 60_000 }),
        /** Runs counted at once (memory: a few hundred bytes each); past it a refusal of a new
         *  kind is written in full. */
        maxOpenRuns: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 10_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
    /** /readyz reports not ready while the audit folder's file system has less free space
     *  than this, before a full disk refuses every request (503 audit_unavailable), so the
     *  pod leaves the Service and the operator is told while there is room to act. Keep
     *  retention.maxTotalBytes + minFreeBytes within the volume. 0 = never. */
    minFreeBytes: Type.Integer({ minimum: 0, default: GiB }),
    /** How often the free space is read (statfs; also bulwark_audit_disk_free_bytes). */
    diskCheckIntervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 10_000 }),
    checkpoint: Type.Object(
      {
        /** A signed checkpoint after this many records... */
        everyRecords: Type.Integer({ minimum: 1, maximum: 100_000, default: 1000 }),
        /** ...or this long after the last one, whichever comes first (only if records were
         *  written since). Records after the last checkpoint are protected by the hash chain
         *  alone: someone with write access could rewrite them consistently. */
        everyMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 60_000 }),
        /** Ed25519 private key (PKCS#8 PEM) that signs checkpoints. The development key is
         *  created (mode 0600, with audit-key.pub.pem beside it) when this default path is
         *  missing; any other path must exist. */
        signingKeyFile: Type.String({ minLength: 1, default: DEV_AUDIT_KEY }),
      },
      { additionalProperties: false, default: {} },
    ),
    /** stdout: also print every record, after it is on disk, as one JSON line on standard
     *  output for a log shipper (Fluent Bit, Vector); the lines are the chained lines. */
    mirror: Type.Union([Type.Literal('none'), Type.Literal('stdout')], { default: 'none' }),
    /** After a write failure: how often to try the disk again. Until then, every request
     *  gets 503 audit_unavailable and /readyz reports not ready. */
    retryMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 1000 }),
  },
  { additionalProperties: false, default: {} },
)

export type AuditConfig = Static<typeof AuditConfig>
