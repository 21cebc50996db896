// The smallest Reflect metadata API that @peculiar/x509's dependency injection (tsyringe)
// needs to load: defineMetadata, getOwnMetadata, getMetadata, metadata. The npm packages
// that provide it (reflect-metadata, core-js) are not dependencies of Bulwark; this module
// installs these four functions only when the runtime lacks them, and must be imported before
// @peculiar/x509 (ES modules evaluate imports in order). Global by necessity: tsyringe reads
// `Reflect.getMetadata` at load time.

type Target = object
type Key = string | symbol | undefined

interface MetadataReflect {
  defineMetadata?(key: unknown, value: unknown, target: Target, property?: Key): void
  getOwnMetadata?(key: unknown, target: Target, property?: Key): unknown
  getMetadata?(key: unknown, target: Target, property?: Key): unknown
  metadata?(key: unknown, value: unknown): (target: Target, property?: Key) => void
}

const R = Reflect as typeof Reflect & MetadataReflect

if (typeof R.getMetadata !== 'function') {
  const store = new WeakMap<Target, Map<Key, Map<unknown, unknown>>>()
  const table = (target: Target, property: Key, create: boolean): Map<unknown, unknown> | undefined => {
    let byProperty = store.get(target)
    if (!byProperty) {
      if (!create) return undefined
      store.set(target, (byProperty = new Map()))
    }
    let entries = byProperty.get(property)
    if (!entries && create) byProperty.set(property, (entries = new Map()))
    return entries
  }
  R.defineMetadata = (key, value, target, property) => void table(target, property, true)!.set(key, value)
  R.getOwnMetadata = (key, target, property) => table(target, property, false)?.get(key)
  R.getMetadata = (key, target, property) => {
    for (let t: Target | null = target; t !== null; t = Object.getPrototypeOf(t) as Target | null) {
      const entries = table(t, property, false)
      if (entries?.has(key)) return entries.get(key)
    }
    return undefined
  }
  R.metadata = (key, value) => (target, property) => R.defineMetadata!(key, value, target, property)
}

export {}
