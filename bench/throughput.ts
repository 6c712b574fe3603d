/**
 * Throughput with 10,000 calls in flight: each call waits for I/O (a
 * `setImmediate` turn), 3 await handlers and 1 background handler listen.
 * Side by side: the bare call, ours, and LangChain's `CallbackManager` with
 * the same handlers (3 awaited, 1 not awaited) around the same I/O, 10,000
 * promise chains in flight.
 */
import { BaseCallbackHandler } from "@langchain/core/callbacks/base"
import { CallbackManager } from "@langchain/core/callbacks/manager"
import { Effect } from "effect"
import { instrumented, noopHandlers, response, type Row, runtimeWith } from "./common.js"

const io = Effect.async<typeof response>((resume) => {
  setImmediate(() => resume(Effect.succeed(response)))
})

const ioPromise = () => new Promise<typeof response>((resolve) => setImmediate(() => resolve(response)))

const langchainManager = () => {
  class H extends BaseCallbackHandler {
    name = "noop"
    constructor(override readonly awaitHandlers: boolean) {
      super()
    }
    override async handleLLMStart() {}
    override async handleLLMEnd() {}
  }
  return CallbackManager.configure([new H(true), new H(true), new H(true), new H(false)])!
}

/** `calls` runs of `one`, `inFlight` at a time, in calls/s. */
const pool = async (one: () => Promise<unknown>, calls: number, inFlight: number): Promise<number> => {
  let next = 0
  const worker = async () => {
    while (next++ < calls) await one()
  }
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: inFlight }, worker))
  return calls / (Number(process.hrtime.bigint() - start) / 1e9)
}

export const run = async (calls = 100_000, inFlight = 10_000): Promise<Array<Row>> => {
  const runtime = runtimeWith([...noopHandlers(3), ...noopHandlers(1, "background")])
  const measure = async (call: Effect.Effect<unknown>) => {
    const all = Effect.forEach(Array.from({ length: calls }), () => call, { concurrency: inFlight, discard: true })
    await runtime.runPromise(Effect.forEach(Array.from({ length: 10_000 }), () => call, { concurrency: 1000, discard: true }))
    const start = process.hrtime.bigint()
    await runtime.runPromise(all)
    return calls / (Number(process.hrtime.bigint() - start) / 1e9)
  }
  const manager = langchainManager()
  const langchainOne = async () => {
    const [llm] = await manager.handleLLMStart({ lc: 1, type: "not_implemented", id: ["bench"] }, ["hello"])
    const r = await ioPromise()
    await llm!.handleLLMEnd({ generations: [[{ text: r.content }]] })
    return r
  }
  // Interleaved: bare, ours, LangChain, twice; the better of the two of each.
  const results = { bare: 0, ours: 0, langchain: 0 }
  for (let round = 0; round < 2; round++) {
    results.bare = Math.max(results.bare, await measure(io))
    results.ours = Math.max(results.ours, await measure(instrumented(io)))
    await pool(langchainOne, 10_000, 1_000)
    results.langchain = Math.max(results.langchain, await pool(langchainOne, calls, inFlight))
  }
  await runtime.dispose()
  return [{
    benchmark: `throughput, ${inFlight} in flight`,
    calls,
    "bare calls/s": Math.round(results.bare),
    "instrumented calls/s": Math.round(results.ours),
    "langchain calls/s": Math.round(results.langchain),
    "instrumented/bare": +(results.ours / results.bare).toFixed(3),
    "instrumented/langchain": +(results.ours / results.langchain).toFixed(3)
  }]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run().then((rows) => console.table(rows))
}
