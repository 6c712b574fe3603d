/**
 * Heap growth over 1,000,000 instrumented calls (3 await handlers + 1
 * background), after a warm-up. Run with `node --expose-gc` for exact figures.
 */
import { Effect } from "effect"
import { gc, instrumented, noopHandlers, response, type Row, runtimeWith } from "./common.js"

export const run = async (calls = 1_000_000): Promise<Array<Row>> => {
  const runtime = runtimeWith([...noopHandlers(3), ...noopHandlers(1, "background")])
  const one = instrumented(Effect.succeed(response))
  const batch = (n: number) => runtime.runPromise(Effect.repeatN(one, n - 1).pipe(Effect.asVoid))
  await batch(100_000)
  await runtime.runPromise(Effect.flatMap(Effect.void, () => Effect.void))
  gc()
  const before = process.memoryUsage().heapUsed
  const start = process.hrtime.bigint()
  for (let done = 0; done < calls; done += 100_000) await batch(100_000)
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  gc()
  const after = process.memoryUsage().heapUsed
  await runtime.dispose()
  return [{
    benchmark: "heap growth",
    calls,
    "heap before MB": +(before / 1048576).toFixed(2),
    "heap after MB": +(after / 1048576).toFixed(2),
    "growth MB": +((after - before) / 1048576).toFixed(2),
    "calls/s": Math.round(calls / seconds),
    "gc exposed": (globalThis as { gc?: unknown }).gc !== undefined ? "yes" : "no (run with --expose-gc)"
  }]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run(Number(process.argv[2] ?? 1_000_000)).then((rows) => console.table(rows))
}
