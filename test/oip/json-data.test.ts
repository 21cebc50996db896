// The JSON `data` decoder shared by request validation and the upstream client: flat and
// nested forms, element types, and the length counted against the shape before allocating.
import t from 'tap'
import { decodeJsonData, type JsonDataFail } from '../../src/oip/json-data.ts'

class Problem extends Error {
  readonly problem: string
  constructor(problem: string, message: string) {
    super(message)
    this.problem = problem
  }
}
const fail: JsonDataFail = (problem, message) => new Problem(problem, message)

t.test('flat and nested data decode to the same row-major typed array', async (t) => {
  t.same(Array.from(decodeJsonData('input "x"', 'FP32', [1, 2, 3, 4], 4, fail) as Float32Array), [1, 2, 3, 4])
  t.same(Array.from(decodeJsonData('input "x"', 'FP32', [[1, 2], [3, 4]], 4, fail) as Float32Array), [1, 2, 3, 4])
  t.same(Array.from(decodeJsonData('input "x"', 'BOOL', [true, false], 2, fail) as Uint8Array), [1, 0])
  t.same(Array.from(decodeJsonData('input "x"', 'INT64', [[2 ** 40]], 1, fail) as BigInt64Array), [2n ** 40n])
})

t.test('a shape that claims more than the data holds is a length problem, found before allocating', async (t) => {
  // 2^33 FP32 elements would be 32 GiB: allocating first would fail with a RangeError instead.
  t.throws(() => decodeJsonData('input "x"', 'FP32', [1], 2 ** 33, fail), { problem: 'length', message: /has 1 elements but shape implies 8589934592/ })
  t.throws(() => decodeJsonData('input "x"', 'FP32', [1, 2, 3], 2, fail), { problem: 'length', message: /more than the 2 elements/ })
})

t.test('bad forms and elements are format problems that name the tensor and the element', async (t) => {
  t.throws(() => decodeJsonData('output "y"', 'FP32', 'nope', 1, fail), { problem: 'format', message: /^output "y": "data" must be an array/ })
  t.throws(() => decodeJsonData('input "x"', 'FP16', [1], 1, fail), { problem: 'format', message: /FP16 tensors as binary/ })
  t.throws(() => decodeJsonData('input "x"', 'FP32', [1, null], 2, fail), { problem: 'format', message: /element 1 is null/ })
  t.throws(() => decodeJsonData('input "x"', 'BOOL', [1], 1, fail), { problem: 'format', message: /element 0 must be true or false/ })
  t.throws(() => decodeJsonData('input "x"', 'INT64', [0.5], 1, fail), { problem: 'format', message: /not an integer in the safe range/ })
  let deep: unknown = [1]
  for (let i = 0; i < 40; i++) deep = [deep]
  t.throws(() => decodeJsonData('input "x"', 'FP32', deep, 1, fail), { problem: 'format', message: /nested more than 32 levels/ })
})
