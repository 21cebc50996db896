export { FakeClock } from '../../kit/clock.ts'
