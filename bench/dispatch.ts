/**
 * Per-call overhead of instrument (start + end) with N no-op await handlers,
 * against the bare call, a hand-written Promise.allSettled dispatcher, and
 * LangChain.js's CallbackManager with awaitHandlers.
 */
import { BaseCallbackHandler } from "@langchain/core/callbacks/base"
import { CallbackManager } from "@langchain/core/callbacks/manager"
import { Effect, Layer, ManagedRuntime, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"

const response = { content: "ok", usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } }
const messages = [{ role: "user", content: "hello" }]

const timeIt = async (iterations: number, run: (n: number) => Promise<void>): Promise<number> => {
  await run(Math.min(20_000, iterations)) // warm-up
  const start = process.hrtime.bigint()
  await run(iterations)
  return Number(process.hrtime.bigint() - start) / 1000 / iterations // µs per call
}

// -- ours ---------------------------------------------------------------------
const oursRuntime = (n: number) => {
  const handlers = Array.from({ length: n }, (_, i) =>
    Dispatcher.toLayer(Handler.make({
      name: `noop-${i}`,
      onLlmStart: () => Effect.void,
      onLlmEnd: () => Effect.void,
      onLlmError: () => Effect.void,
      timeout: "30 seconds",
      retry: Schedule.exponential("1 second").pipe(Schedule.intersect(Schedule.recurs(2)))
    })))
  const merged = handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>((acc, l) => Layer.merge(acc, l), Layer.empty)
  return ManagedRuntime.make(merged.pipe(Layer.provideMerge(Dispatcher.layer())))
}

const oursLoop = (runtime: ManagedRuntime.ManagedRuntime<Dispatcher.Dispatcher, unknown>, instrumented: boolean) =>
  (iterations: number) => {
    const call = Effect.succeed(response)
    const one = instrumented
      ? call.pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", messages, userId: "u1" }))
      : call
    return runtime.runPromise(Effect.repeatN(one, iterations - 1).pipe(Effect.asVoid))
  }

// -- hand-written ---------------------------------------------------------------
type PHandler = { onStart: (e: unknown) => Promise<void>; onEnd: (e: unknown) => Promise<void> }
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
      await new Promise((r) => setTimeout(r, delay * 2 ** i))
    }
  }
}
const handDispatch = (handlers: ReadonlyArray<PHandler>, pick: (h: PHandler) => (e: unknown) => Promise<void>, event: unknown) =>
  Promise.allSettled(handlers.map((h) => withTimeout(withRetry(() => pick(h)(event), 3, 1000), 30_000)))

const handLoop = (n: number) => {
  const handlers: Array<PHandler> = Array.from({ length: n }, () => ({ onStart: async () => {}, onEnd: async () => {} }))
  return async (iterations: number) => {
    for (let i = 0; i < iterations; i++) {
      await handDispatch(handlers, (h) => h.onStart, { messages })
      const r = await Promise.resolve(response)
      await handDispatch(handlers, (h) => h.onEnd, r)
    }
  }
}

// -- LangChain ----------------------------------------------------------------------
class Noop extends BaseCallbackHandler {
  name = "noop"
  override awaitHandlers = true
  override async handleLLMStart() {}
  override async handleLLMEnd() {}
}
const langchainLoop = (n: number) => {
  const manager = CallbackManager.configure(Array.from({ length: n }, () => new Noop()))!
  return async (iterations: number) => {
    for (let i = 0; i < iterations; i++) {
      const [run] = await manager.handleLLMStart({ lc: 1, type: "not_implemented", id: ["bench"] }, ["hello"])
      const r = await Promise.resolve(response)
      await run!.handleLLMEnd({ generations: [[{ text: r.content }]] })
    }
  }
}

export const run = async (iterations = 100_000) => {
  const rows: Array<Record<string, string | number>> = []
  for (const n of [1, 3, 10]) {
    const runtime = oursRuntime(n)
    const bare = await timeIt(iterations, oursLoop(runtime, false))
    const ours = await timeIt(iterations, oursLoop(runtime, true))
    const hand = await timeIt(iterations, handLoop(n))
    const lc = await timeIt(Math.min(iterations, 50_000), langchainLoop(n))
    await runtime.dispose()
    rows.push({
      handlers: n,
      "bare µs": +bare.toFixed(2),
      "ours µs": +ours.toFixed(2),
      "hand-written µs": +hand.toFixed(2),
      "langchain µs": +lc.toFixed(2),
      "ours/langchain": +(ours / lc).toFixed(3),
      "ours/hand": +(ours / hand).toFixed(3)
    })
  }
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run(Number(process.argv[2] ?? 100_000)).then((rows) => console.table(rows))
}
