// Per-model output protection settings (the `output:` section of policies/<model>.yaml).
// Owned by the output-privacy stage; filled in by that work.

import { Type, type Static } from '@sinclair/typebox'

export const OutputPolicy = Type.Object({}, { additionalProperties: false, default: {} })
export type OutputPolicy = Static<typeof OutputPolicy>
