// Every setting read from the environment fails, when bad, with a ConfigError
// that names its variable and its value, each once (secrets name the variable only).
import { assert, describe, it } from "@effect/vitest"
import { Cause, ConfigProvider, Effect, Exit, Layer } from "effect"
import * as Cost from "../layers/Cost.js"
import * as Prometheus from "../layers/Prometheus.js"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import { Dispatcher, TokenStore } from "../src/index.js"

const built = (env: Record<string, string>, layer: Layer.Layer<never, unknown>) =>
  Effect.scoped(Layer.build(layer)).pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.exit
  )

const occurrences = (text: string, part: string) => text.split(part).length - 1

const base = Layer.merge(Dispatcher.layer(), TokenStore.layerMemory)

const cases: ReadonlyArray<readonly [string, string, Layer.Layer<never, unknown>]> = [
  ["CALLBACK_TIMEOUT", "abc", Dispatcher.layerConfig],
  ["CALLBACK_MAX_CONCURRENT", "0", Dispatcher.layerConfig],
  ["CALLBACK_MAX_RETRY_ATTEMPTS", "1.5", Dispatcher.layerConfig],
  ["CALLBACK_RETRY_DELAY", "-1", Dispatcher.layerConfig],
  ["CALLBACK_ENABLE_RECOVERY", "maybe", Dispatcher.layerConfig],
  ["CALLBACK_MODE", "sometimes", Dispatcher.layerConfig],
  ["CALLBACK_SHUTDOWN_TIMEOUT", "soon", Dispatcher.layerConfig],
  ["CALLBACK_BUFFER_SIZE", "none", Dispatcher.layerConfig],
  ["CALLBACK_BILLING_ANCHOR_DAY", "31", Layer.provide(TokenUsage.layerConfig(), base)],
  ["CALLBACK_CYCLE_START_DATE", "2025-02-30", Layer.provide(TokenUsage.layerConfig(), base)],
  ["CALLBACK_PRICE_TABLE", "{bad json", Layer.provide(Cost.layerConfig(), base)],
  ["CALLBACK_METRICS_PORT", "70000", Prometheus.layerConfig()],
  ["REDIS_CLUSTER_NODES", "127.0.0.1:notaport", RedisTokenStore.layerClusterConfig()]
]

describe("configuration errors", () => {
  for (const [variable, value, layer] of cases) {
    it.effect(`${variable}=${value}`, () =>
      Effect.gen(function*() {
        const exit = yield* built({ [variable]: value }, layer)
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const text = Cause.pretty(exit.cause).split("\n")[0]!
          assert.strictEqual(occurrences(text, variable), 1, text)
          assert.strictEqual(occurrences(text, JSON.stringify(value)), 1, text)
        }
      }))
  }

  it.effect("REDIS_URL names the variable, never the value (it may hold a password)", () =>
    Effect.gen(function*() {
      const exit = yield* built({ REDIS_URL: "http://user:secret@host" }, RedisTokenStore.layerConfig())
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const text = Cause.pretty(exit.cause)
        assert.include(text, "REDIS_URL")
        assert.notInclude(text, "secret")
      }
    }))

  it.effect("REDIS_TLS_*_FILE: a file that cannot be read names the variable and the path; a certificate without its key names both variables", () =>
    Effect.gen(function*() {
      const url = { REDIS_URL: "rediss://127.0.0.1:6380" }
      for (const variable of ["REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"]) {
        const path = `/nonexistent/${variable.toLowerCase()}.pem`
        const exit = yield* built({ ...url, [variable]: path }, RedisTokenStore.layerConfig())
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const text = Cause.pretty(exit.cause).split("\n")[0]!
          assert.strictEqual(occurrences(text, variable), 1, text)
          assert.strictEqual(occurrences(text, JSON.stringify(path)), 1, text)
          assert.include(text, "ENOENT")
        }
      }
      const pem = new URL(import.meta.url).pathname
      for (const [set, missing] of [["REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"], ["REDIS_TLS_KEY_FILE", "REDIS_TLS_CERT_FILE"]]) {
        const exit = yield* built({ ...url, [set!]: pem }, RedisTokenStore.layerConfig())
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const text = Cause.pretty(exit.cause).split("\n")[0]!
          assert.strictEqual(occurrences(text, missing!), 1, text)
          assert.strictEqual(occurrences(text, set!), 1, text)
          // The file read is not shown (a key's content is a secret).
          assert.notInclude(text, "import")
        }
      }
    }))

  it.effect("REDIS_CLUSTER_NODES names the variable, never a node that may hold a password", () =>
    Effect.gen(function*() {
      for (const [nodes, problem] of [
        ["redis://:secret@10.0.0.1:99999,10.0.0.2:7000", "not shown"],
        ["redis://:secret@10.0.0.1:7000,redis://:secret2@10.0.0.2:7000", "the same credentials"],
        ["rediss://:secret@10.0.0.1:7000,redis://10.0.0.2:7000", "over TLS"],
        [" , ", "at least one node"]
      ] as const) {
        const exit = yield* built({ REDIS_CLUSTER_NODES: nodes }, RedisTokenStore.layerClusterConfig())
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const text = Cause.pretty(exit.cause)
          assert.include(text, "REDIS_CLUSTER_NODES")
          assert.include(text, problem)
          assert.notInclude(text, "secret")
        }
      }
    }))
})
