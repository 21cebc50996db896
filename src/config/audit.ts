// The `audit:` slice of bulwark.yaml: where the audit trail is written, how durably, when
// files rotate and are removed, and how checkpoints are signed. Owned by src/audit and the
// audit-log stage. Relative paths are resolved from the config file's folder (the working
// directory for the embedded default).

import { Type, type Static } from '@sinclair/typebox'

/** Where the development audit signing key is created when it is missing. */
export const DEV_AUDIT_KEY = '.bulwark/dev/audit-key.pem'

const MiB = 1024 * 1024

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
        /** Delete the oldest files while all files together exceed this; 0 = no limit. The
         *  default keeps everything: the gateway never deletes audit records unless told to
         *  (a full disk makes it refuse requests, which /readyz reports, rather than forget). */
        maxTotalBytes: Type.Integer({ minimum: 0, default: 0 }),
        /** Delete files whose newest record is older than this; 0 = no limit. */
        maxAgeMs: Type.Integer({ minimum: 0, default: 0 }),
      },
      { additionalProperties: false, default: {} },
    ),
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
