/**
 * Throughput with 10,000 calls in flight: each call waits for I/O (a
 * `setImmediate` turn), 3 await handlers and 1 background handler listen.
 *
 * Every variant has the same loop shape: 10,000 workers, each making calls
 * one after the other until the total is reached (fibers for the Effect
 * variants, async functions for the promise ones). Side by side, interleaved
 * (order rotated each round): the bare Effect call, ours around it, the bare
 * promise call, and LangChain's `CallbackManager` with the same handlers (3
 * awaited, 1 not awaited) around it. Besides calls/s, the time each library
 * adds per call over its own bare call. Medians of the rounds (as every
 * per-call row reports), best in brackets.
 */
import { BaseCallbackHandler } from "@langchain/core/callbacks/base"
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { CallbackManager } from "@langchain/core/callbacks/manager"
import { Effect } from "effect"
import { instrumented, median, noopHandlers, response, type Row, runtimeWith } from "./common.js"

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

/** `calls` runs of `one` by `inFlight` async workers, in calls/s. */
const pool = async (one: () => Promise<unknown>, calls: number, inFlight: number): Promise<number> => {
  let next = 0
  const worker = async () => {
    while (next++ < calls) await one()
  }
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: inFlight }, worker))
  return calls / (Number(process.hrtime.bigint() - start) / 1e9)
}

/** The same pool in Effect: `inFlight` fibers, each running `call` until `calls` were made. */
const fiberPool = (call: Effect.Effect<unknown>, calls: number, inFlight: number): Effect.Effect<void> =>
  Effect.suspend(() => {
    let next = 0
    const worker = Effect.whileLoop({ while: () => next++ < calls, body: () => call, step: () => {} })
    return Effect.forEach(Array.from({ length: inFlight }), () => worker, { concurrency: "unbounded", discard: true })
  })


export const run = async (calls = 100_000, inFlight = 10_000, rounds = 7): Promise<Array<Row>> => {
  const runtime = runtimeWith([...noopHandlers(3), ...noopHandlers(1, "background")])
  const manager = langchainManager()
  const langchainOne = async () => {
    const [llm] = await manager.handleLLMStart({ lc: 1, type: "not_implemented", id: ["bench"] }, ["hello"])
    const r = await ioPromise()
    await llm!.handleLLMEnd({ generations: [[{ text: r.content }]] })
    return r
  }
  const timed = (call: Effect.Effect<unknown>) => async () => {
    const start = process.hrtime.bigint()
    await runtime.runPromise(fiberPool(call, calls, inFlight))
    return calls / (Number(process.hrtime.bigint() - start) / 1e9)
  }
  const variants: Record<"bare" | "ours" | "promise" | "langchain", () => Promise<number>> = {
    bare: timed(io),
    ours: timed(instrumented(io)),
    promise: () => pool(ioPromise, calls, inFlight),
    langchain: () => pool(langchainOne, calls, inFlight)
  }
  // Warm-up, a tenth of the calls each.
  await runtime.runPromise(fiberPool(instrumented(io), calls / 10, inFlight / 10))
  await pool(langchainOne, calls / 10, inFlight / 10)
  const names = Object.keys(variants) as Array<keyof typeof variants>
  const results = { bare: [] as Array<number>, ours: [] as Array<number>, promise: [] as Array<number>, langchain: [] as Array<number> }
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(round + i) % names.length]!
      results[name].push(await variants[name]())
    }
  }
  await runtime.dispose()
  const best = (name: keyof typeof results) => Math.max(...results[name])
  const mid = (name: keyof typeof results) => median(results[name])
  // Time added per call over the bare call, from the medians.
  const added = (wrapped: number, bare: number) => +(1e6 / wrapped - 1e6 / bare).toFixed(2)
  return [{
    benchmark: `throughput, ${inFlight} in flight`,
    calls,
    rounds,
    "bare calls/s, median (best)": `${Math.round(mid("bare"))} (${Math.round(best("bare"))})`,
    "instrumented calls/s, median (best)": `${Math.round(mid("ours"))} (${Math.round(best("ours"))})`,
    "langchain calls/s, median (best)": `${Math.round(mid("langchain"))} (${Math.round(best("langchain"))})`,
    "bare promise calls/s, median (best)": `${Math.round(mid("promise"))} (${Math.round(best("promise"))})`,
    "instrumented/bare, medians": +(mid("ours") / mid("bare")).toFixed(3),
    "instrumented/langchain, medians": +(mid("ours") / mid("langchain")).toFixed(3),
    "instrumented/langchain, best": +(best("ours") / best("langchain")).toFixed(3),
    "µs added per call, ours": added(mid("ours"), mid("bare")),
    "µs added per call, langchain": added(mid("langchain"), mid("promise"))
  }]
}

/**
 * {@link run} in a process of its own (`npm run bench` runs it so). In the
 * process that ran the dispatch rows before it, this row read 0.91-0.94 x
 * LangChain on medians where a fresh process read 1.03-1.14 (session 23):
 * the code both libraries share with those rows is compiled for the handler
 * shapes they saw, ours for effects of many kinds (suspending, failing), and
 * the heap holds what they left. A fresh process measures this row alone,
 * and reproduces from `node .tmp/bench-dist/bench/throughput.js`.
 */
export const runIsolated = async (calls: number, inFlight: number, rounds: number): Promise<Array<Row>> => {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["--expose-gc", fileURLToPath(import.meta.url), "--json", String(calls), String(inFlight), String(rounds)],
    { maxBuffer: 1 << 20 }
  )
  return JSON.parse(stdout.trim().split("\n").pop()!) as Array<Row>
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv[2] === "--json") {
    const [calls, inFlight, rounds] = process.argv.slice(3).map(Number)
    run(calls, inFlight, rounds).then((rows) => console.log(JSON.stringify(rows)))
  } else {
    run().then((rows) => console.table(rows))
  }
}
