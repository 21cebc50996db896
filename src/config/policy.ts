// Per-model policy files: policies/<model>.yaml. One file per model says who may call it
// (workload identities and token scopes/claims, per verb), how often, how inputs are
// screened and how outputs are protected. Default deny: a model without a policy file is
// not callable.

import { Type, type Static } from '@sinclair/typebox'
import { OutputPolicy } from './output-policy.ts'
import { ScreeningPolicy } from './screening-policy.ts'

export const PolicySchema = Type.Object(
  {
    /** The model this policy governs; must match the file name. */
    model: Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
    // Authorization rules, rate limits: filled in by the front-door work.
    screening: ScreeningPolicy,
    output: OutputPolicy,
  },
  { additionalProperties: false },
)

export type Policy = Static<typeof PolicySchema>
