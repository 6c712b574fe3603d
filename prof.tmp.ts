import { Effect, Layer, Logger, ManagedRuntime, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "./src/index.js"
const response = { content: "ok", usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } }
const n = Number(process.argv[2] ?? 3)
const kind = process.argv[3] ?? "suspend"
const hook = kind === "suspend" ? () => Effect.promise(() => Promise.resolve()) : kind === "fail" ? () => Effect.fail("x") : () => Effect.void
const handlers = Array.from({ length: n }, (_, i) => Dispatcher.toLayer(Handler.make({ name: `h${i}`, onLlmStart: hook, onLlmEnd: hook, onLlmError: hook, timeout: "30 seconds",
  retry: kind === "fail" ? Schedule.recurs(2) : Schedule.exponential("1 second").pipe(Schedule.intersect(Schedule.recurs(2))) })))
const merged = handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>((acc, l) => Layer.merge(acc, l), Layer.empty)
const rt = ManagedRuntime.make(merged.pipe(Layer.provideMerge(Dispatcher.layer()), Layer.provide(Logger.remove(Logger.defaultLogger))))
const call = Effect.succeed(response).pipe(Callbacks.instrument({ provider: "openai", model: "m", messages: [{ role: "user", content: "hi" }], userId: "u1" }))
const runtime = await rt.runtime()
const { Runtime } = await import("effect")
const run = Runtime.runPromise(runtime)
for (let r = 0; r < 5; r++) {
  const calls = 20000
  const t = process.hrtime.bigint()
  for (let i = 0; i < calls; i++) await run(call)
  console.log(kind, n, Number(process.hrtime.bigint() - t) / 1000 / calls, "us/call")
}
await rt.dispose()
