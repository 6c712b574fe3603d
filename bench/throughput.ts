/**
 * Throughput with 10,000 calls in flight: each call waits for I/O (a
 * `setImmediate` turn), 3 await handlers and 1 background handler listen.
 */
import { Effect } from "effect"
import { instrumented, noopHandlers, response, type Row, runtimeWith } from "./common.js"

const io = Effect.async<typeof response>((resume) => {
  setImmediate(() => resume(Effect.succeed(response)))
})

export const run = async (calls = 100_000, inFlight = 10_000): Promise<Array<Row>> => {
  const runtime = runtimeWith([...noopHandlers(3), ...noopHandlers(1, "background")])
  const measure = async (call: Effect.Effect<unknown>) => {
    const all = Effect.forEach(Array.from({ length: calls }), () => call, { concurrency: inFlight, discard: true })
    await runtime.runPromise(Effect.forEach(Array.from({ length: 10_000 }), () => call, { concurrency: 1000, discard: true }))
    const start = process.hrtime.bigint()
    await runtime.runPromise(all)
    return calls / (Number(process.hrtime.bigint() - start) / 1e9)
  }
  const bare = await measure(io)
  const ours = await measure(instrumented(io))
  await runtime.dispose()
  return [{
    benchmark: `throughput, ${inFlight} in flight`,
    calls,
    "bare calls/s": Math.round(bare),
    "instrumented calls/s": Math.round(ours),
    "instrumented/bare": +(ours / bare).toFixed(3)
  }]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run().then((rows) => console.table(rows))
}
