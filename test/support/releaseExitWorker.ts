/**
 * A process whose token store does not answer releases (as a Redis that went
 * away): it makes guarded calls that fail, whose holds the guard then tries
 * to release again in the background for as long as they would live (60 s
 * here), and ends its main program. It must exit at once: a release tried
 * again in the background does not hold the process open.
 */
import { Effect, Layer, Logger } from "effect"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Budget, Callbacks, Dispatcher, TokenStore } from "../../src/index.js"

/** The in-memory store, whose releases fail as a store out of reach does. */
const storeWithoutReleases = Layer.effect(
  TokenStore.TokenStore,
  Effect.map(TokenStore.TokenStore, (store): TokenStore.Service => ({
    ...store,
    release: () => Effect.fail(new TokenStore.TokenStoreError({ reason: "Unavailable", message: "the store is out of reach" }))
  }))
).pipe(Layer.provide(TokenStore.layerMemory))

const failing = Effect.fail("provider error").pipe(
  Callbacks.instrument({ provider: "openai", model: "m", userId: "u1", params: { maxTokens: 10 } }),
  Budget.guard({ holdTtl: "60 seconds" })
)
/** The warnings that a release will be tried again. */
let notYet = 0
const counting = Logger.make(({ message }) => {
  if ([message].flat().join(" ").includes("budget hold not released yet")) notYet++
})
const started = Date.now()
Effect.runPromise(
  Effect.forEach(Array.from({ length: 5 }), () => Effect.exit(failing), { discard: true }).pipe(
    Effect.provide(TokenUsage.layer().pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), storeWithoutReleases)))),
    Effect.provide(Logger.replace(Logger.defaultLogger, counting))
  )
).then(() => {
  process.stdout.write(JSON.stringify({ ms: Date.now() - started, notYet }) + "\n")
})
