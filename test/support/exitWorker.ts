/**
 * A process that makes instrumented calls whose handlers suspend and finish
 * at once, under a long timeout, then ends its main program: it must exit at
 * once (a settled invocation's timeout does not hold the process open).
 */
import { Effect, Layer } from "effect"
import { Callbacks, Dispatcher, Handler } from "../../src/index.js"

const quick = Handler.make({
  name: "quick",
  onLlmStart: () => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 5))),
  onLlmEnd: () => Effect.promise(() => Promise.resolve()),
  timeout: "60 seconds"
})
const call = Effect.succeed({ content: "ok" }).pipe(
  Callbacks.instrument({ provider: "openai", model: "m", messages: [{ role: "user", content: "hi" }] })
)
const layer = Dispatcher.toLayer(quick).pipe(Layer.provideMerge(Dispatcher.layer()))
const started = Date.now()
Effect.runPromise(
  Effect.zipRight(
    Effect.forEach(Array.from({ length: 20 }), () => call, { concurrency: 5, discard: true }),
    Dispatcher.health
  ).pipe(Effect.provide(layer))
).then((health) => {
  process.stdout.write(JSON.stringify({ successes: health.handlers[0]!.successes, ms: Date.now() - started }) + "\n")
})
