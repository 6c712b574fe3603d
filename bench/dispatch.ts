/**
 * Per-call cost of instrument (start + end) with N handlers, side by side in
 * one process against the bare call, a hand-written Promise dispatcher
 * (Promise.allSettled + setTimeout timeouts + retries) and LangChain.js's
 * CallbackManager, for four kinds of handlers:
 *
 * - `no-op`: handlers that return at once (`Effect.void`: a completed effect,
 *   as `Handler.sync` hooks return; the others: an empty function);
 * - `sync`: handlers that do synchronous work (a counter) in `Effect.sync`, as
 *   most handlers are written: a hook fiber each (LangChain and hand-written:
 *   the same work in their function);
 * - `suspend`: handlers that suspend once (`Effect.promise(() => Promise.resolve())`,
 *   `await Promise.resolve()` for the others);
 * - `fail`: handlers that fail every attempt: 3 attempts without delay (ours and
 *   hand-written); LangChain does not retry, so its handlers throw once. No
 *   variant writes its failures anywhere: ours runs without a logger (the
 *   warning is not built), LangChain's `console.warn` of each failure is
 *   silenced for the run;
 * - `background`: no-op handlers in background mode (LangChain: handlers not awaited).
 *
 * Method: every variant runs the same loop shape (a JavaScript `for` loop
 * awaiting one call at a time; ours and bare through `Runtime.runPromise`),
 * in interleaved rounds: each round runs one batch of every configuration, in
 * an order rotated from round to round, and the table gives the median and
 * the minimum over the rounds.
 */
import { BaseCallbackHandler } from "@langchain/core/callbacks/base"
import { CallbackManager } from "@langchain/core/callbacks/manager"
import { Effect, Layer, Logger, ManagedRuntime, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"
import { median } from "./common.js"

const response = { content: "ok", usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } }
const messages = [{ role: "user", content: "hello" }]

export type Kind = "no-op" | "sync" | "suspend" | "fail" | "background"
export const kinds: ReadonlyArray<Kind> = ["no-op", "sync", "suspend", "fail", "background"]
export const sizes: ReadonlyArray<number> = [1, 3, 10]

/** One call of a variant, as a Promise. */
export type One = () => Promise<unknown>

// -- ours ---------------------------------------------------------------------
const failure = Effect.fail("handler failed")
/** The work of the `sync` handlers. */
let counted = 0
const count = () => {
  counted++
}
const hookOf = (kind: Kind) =>
  kind === "suspend"
    ? () => Effect.promise(() => Promise.resolve())
    : kind === "fail"
    ? () => failure
    : kind === "sync"
    ? () => Effect.sync(count)
    : () => Effect.void

export const oursRuntime = (kind: Kind, n: number) => {
  const hook = hookOf(kind)
  const handlers = Array.from({ length: n }, (_, i) =>
    Dispatcher.toLayer(Handler.make({
      name: `${kind}-${i}`,
      mode: kind === "background" ? "background" : "await",
      onLlmStart: hook,
      onLlmEnd: hook,
      onLlmError: hook,
      timeout: "30 seconds",
      // Three attempts in all; without delay, so that the failing row measures the dispatcher, not the clock.
      retry: kind === "fail" ? Schedule.recurs(2) : Schedule.exponential("1 second").pipe(Schedule.intersect(Schedule.recurs(2)))
    })))
  const merged = handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>((acc, l) => Layer.merge(acc, l), Layer.empty)
  // The failing rows would log a warning per failed invocation: what is measured is
  // the dispatch, not the console (LangChain's and the hand-written ones log nothing).
  return ManagedRuntime.make(
    merged.pipe(Layer.provideMerge(Dispatcher.layer()), Layer.provide(Logger.remove(Logger.defaultLogger)))
  )
}

export const instrumented = Effect.succeed(response).pipe(
  Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", messages, userId: "u1" })
)
export const bare = Effect.succeed(response)

// -- hand-written ---------------------------------------------------------------
type PHandler = { readonly onStart: () => Promise<void>; readonly onEnd: () => Promise<void> }
const withTimeout = <A>(p: Promise<A>, ms: number): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<A>((_, reject) => {
      timer = setTimeout(() => reject(new Error("timeout")), ms)
    })
  ]).finally(() => clearTimeout(timer))
}
const withRetry = async (f: () => Promise<void>, attempts: number, delay: number): Promise<void> => {
  for (let i = 0;; i++) {
    try {
      return await f()
    } catch (e) {
      if (i + 1 >= attempts) throw e
      if (delay > 0) await new Promise((r) => setTimeout(r, delay * 2 ** i))
    }
  }
}
export const handOne = (kind: Kind, n: number): One => {
  const body = kind === "suspend"
    ? async () => {
      await Promise.resolve()
    }
    : kind === "fail"
    ? async () => {
      throw new Error("handler failed")
    }
    : kind === "sync"
    ? async () => {
      count()
    }
    : async () => {}
  const handlers: Array<PHandler> = Array.from({ length: n }, () => ({ onStart: body, onEnd: body }))
  const delay = kind === "fail" ? 0 : 1000
  const dispatch = (pick: (h: PHandler) => () => Promise<void>) => {
    const all = Promise.allSettled(handlers.map((h) => withTimeout(withRetry(pick(h), 3, delay), 30_000)))
    return kind === "background" ? Promise.resolve() : all
  }
  return async () => {
    await dispatch((h) => h.onStart)
    const r = await Promise.resolve(response)
    await dispatch((h) => h.onEnd)
    return r
  }
}

// -- LangChain ----------------------------------------------------------------------
export const langchainOne = (kind: Kind, n: number): One => {
  class H extends BaseCallbackHandler {
    name = `bench-${kind}`
    override awaitHandlers = kind !== "background"
    override async handleLLMStart() {
      if (kind === "suspend") await Promise.resolve()
      if (kind === "fail") throw new Error("handler failed")
      if (kind === "sync") count()
    }
    override async handleLLMEnd() {
      if (kind === "suspend") await Promise.resolve()
      if (kind === "fail") throw new Error("handler failed")
      if (kind === "sync") count()
    }
  }
  const manager = CallbackManager.configure(Array.from({ length: n }, () => new H()))!
  return async () => {
    const [run] = await manager.handleLLMStart({ lc: 1, type: "not_implemented", id: ["bench"] }, ["hello"])
    const r = await Promise.resolve(response)
    await run!.handleLLMEnd({ generations: [[{ text: r.content }]] })
    return r
  }
}

/** µs per call of `calls` calls of `one`, one at a time: the loop every variant shares. */
const batch = async (one: One, calls: number): Promise<number> => {
  const start = process.hrtime.bigint()
  for (let i = 0; i < calls; i++) await one()
  return Number(process.hrtime.bigint() - start) / 1000 / calls
}


const callsPerBatch: Record<Kind, number> = { "no-op": 5_000, sync: 3_000, suspend: 2_000, fail: 500, background: 5_000 }

export interface Options {
  readonly rounds?: number | undefined
  readonly kinds?: ReadonlyArray<Kind> | undefined
}

export const run = async (options: Options = {}): Promise<Array<Record<string, string | number>>> => {
  // LangChain reports each handler failure with console.warn (console.error
  // when the handler raises errors): silenced, like ours, which runs without a logger.
  const { error, warn } = console
  console.error = () => {}
  console.warn = () => {}
  try {
    return await runSilenced(options)
  } finally {
    console.error = error
    console.warn = warn
  }
}

const runSilenced = async (options: Options): Promise<Array<Record<string, string | number>>> => {
  const rounds = options.rounds ?? 7
  const configs = (options.kinds ?? kinds).flatMap((kind) => sizes.map((n) => ({ kind, n })))
  const prepared = configs.map(({ kind, n }) => {
    const runtime = oursRuntime(kind, n)
    return {
      kind,
      n,
      runtime,
      variants: {
        bare: () => runtime.runPromise(bare),
        ours: () => runtime.runPromise(instrumented),
        "hand-written": handOne(kind, n),
        langchain: langchainOne(kind, n)
      } as Record<string, One>,
      times: { bare: [], ours: [], "hand-written": [], langchain: [] } as Record<string, Array<number>>
    }
  })
  // Warm-up of every variant, twice.
  for (let i = 0; i < 2; i++) {
    for (const config of prepared) {
      for (const one of Object.values(config.variants)) await batch(one, 1_000)
      if (config.kind === "background") await config.runtime.runPromise(Dispatcher.flush)
    }
  }
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < prepared.length; k++) {
      const config = prepared[(k + round) % prepared.length]!
      const names = Object.keys(config.variants)
      for (let v = 0; v < names.length; v++) {
        const name = names[(v + round) % names.length]!
        config.times[name]!.push(await batch(config.variants[name]!, callsPerBatch[config.kind]))
        // Background work left by a batch is finished before the next one is timed.
        if (config.kind === "background") await config.runtime.runPromise(Dispatcher.flush)
      }
    }
  }
  const rows: Array<Record<string, string | number>> = []
  for (const config of prepared) {
    await config.runtime.runPromise(Dispatcher.flush)
    await config.runtime.dispose()
    const m = (name: string) => median(config.times[name]!)
    const lo = (name: string) => Math.min(...config.times[name]!)
    rows.push({
      handlers: `${config.kind} x${config.n}`,
      "bare µs": +m("bare").toFixed(2),
      "ours µs": +m("ours").toFixed(2),
      "ours min µs": +lo("ours").toFixed(2),
      "hand-written µs": +m("hand-written").toFixed(2),
      "langchain µs": +m("langchain").toFixed(2),
      "langchain min µs": +lo("langchain").toFixed(2),
      "ours/langchain": +(m("ours") / m("langchain")).toFixed(3),
      "ours/hand": +(m("ours") / m("hand-written")).toFixed(3)
    })
  }
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run({ rounds: Number(process.argv[2] ?? 7) }).then((rows) => console.table(rows))
}
