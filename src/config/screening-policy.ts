// Per-model screening settings (the `screening:` section of policies/<model>.yaml).
// Owned by the adversarial-screen stage; filled in by that work.

import { Type, type Static } from '@sinclair/typebox'

export const ScreeningPolicy = Type.Object({}, { additionalProperties: false, default: {} })
export type ScreeningPolicy = Static<typeof ScreeningPolicy>
