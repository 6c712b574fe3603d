/**
 * A small example of the core API: three handlers hear a few calls.
 */
import { Effect, Layer, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"

const printer = Handler.make({
  name: "printer",
  onLlmStart: (e) => Effect.log(`start ${e.call.model} for ${e.call.userId ?? "anonymous"}`),
  onLlmEnd: (e) => Effect.log(`end   ${e.call.model}: ${e.response.content} (${e.response.usage?.totalTokens ?? "?"} tokens)`),
  onLlmError: (e) => Effect.log(`error ${e.call.model}: ${e.failure.message}`)
})

let flips = 0
const flaky = Handler.make({
  name: "flaky",
  onLlmEnd: () => Effect.suspend(() => (++flips % 2 === 1 ? Effect.fail("transient") : Effect.void)),
  retry: Schedule.spaced("10 millis").pipe(Schedule.intersect(Schedule.recurs(2)))
})

const CallbacksLive = Layer.mergeAll(Dispatcher.toLayer(printer), Dispatcher.toLayer(flaky)).pipe(
  Layer.provideMerge(Dispatcher.layer())
)

const model = (prompt: string) =>
  prompt.includes("fail")
    ? Effect.fail(new Error("provider error"))
    : Effect.succeed({ content: `echo: ${prompt}`, usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } })

const program = Effect.gen(function*() {
  for (const prompt of ["hello", "please fail", "bye"]) {
    yield* model(prompt).pipe(
      Callbacks.instrument({ provider: "demo", model: "echo-1", messages: [{ role: "user", content: prompt }], userId: "alice" }),
      Effect.catchAll((error) => Effect.log(`call failed as it would without callbacks: ${error.message}`))
    )
  }
  const health = yield* Dispatcher.health
  for (const h of health.handlers) {
    yield* Effect.log(`${h.name}: ${h.successes} ok, ${h.failures} failed, ${h.retries} retries`)
  }
})

Effect.runPromise(program.pipe(Effect.provide(CallbacksLive)))
