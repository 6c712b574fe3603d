/**
 * Shared pieces of the benchmarks: a dispatcher with N no-op await handlers
 * under the full policy (timeout, retry schedule, isolation).
 */
import { Effect, Layer, ManagedRuntime, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"

export const response = { content: "ok", usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } }
export const messages = [{ role: "user", content: "hello" }]

export const noopHandlers = (n: number, mode: Handler.Mode = "await") =>
  Array.from({ length: n }, (_, i) =>
    Handler.make({
      name: `noop-${mode}-${i}`,
      mode,
      onLlmStart: () => Effect.void,
      onLlmEnd: () => Effect.void,
      onLlmError: () => Effect.void,
      timeout: "30 seconds",
      retry: Schedule.exponential("1 second").pipe(Schedule.intersect(Schedule.recurs(2)))
    }))

export const runtimeWith = (handlers: ReadonlyArray<Handler.Handler<never, never>>) => {
  const merged = handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>(
    (acc, handler) => Layer.merge(acc, Dispatcher.toLayer(handler)),
    Layer.empty
  )
  return ManagedRuntime.make(merged.pipe(Layer.provideMerge(Dispatcher.layer())))
}

export const instrumented = <A, E, R>(call: Effect.Effect<A, E, R>) =>
  call.pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", messages, userId: "u1" }))

export const gc = () => {
  const collect = (globalThis as { gc?: () => void }).gc
  if (collect !== undefined) {
    collect()
    collect()
  }
}

export type Row = Record<string, string | number>

/** The median of `values` (the mean of the two middle ones for an even count). */
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}
