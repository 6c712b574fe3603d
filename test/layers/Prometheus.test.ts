import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Layer, Logger, LogLevel, Scope } from "effect"
import * as net from "node:net"
import * as GenAiMetrics from "../../layers/GenAiMetrics.js"
import * as Prometheus from "../../layers/Prometheus.js"
import { Callbacks, Dispatcher, Handler } from "../../src/index.js"
import { freePort } from "../support/globalSetup.js"

const scrape = (url: string) =>
  Effect.tryPromise(async () => {
    const response = await fetch(url)
    return { status: response.status, type: response.headers.get("content-type"), text: await response.text() }
  })

/** The value of the sample `name{...labels}` whose labels include all of `labels`. */
const sample = (text: string, name: string, labels: Record<string, string>): number | undefined => {
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null || match[1] !== name) continue
    const found: Record<string, string> = {}
    for (const pair of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      found[pair[1]!] = pair[2]!
    }
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) return Number(match[3])
  }
  return undefined
}

const typeOf = (text: string, name: string): string | undefined =>
  new RegExp(`^# TYPE ${name} (\\w+)$`, "m").exec(text)?.[1]

const unique = `${process.pid}_${Date.now().toString(36)}`

describe("Prometheus", () => {
  it.live("serves the dispatcher's and the GenAI metrics with their names, types, labels and values", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const ok = `prom_ok_${unique}`
      const failing = `prom_failing_${unique}`
      const model = `prom-model-${unique}`
      const handlers = Layer.mergeAll(
        Dispatcher.toLayer(Handler.make({ name: ok, onLlmStart: () => Effect.void, onLlmEnd: () => Effect.void })),
        Dispatcher.toLayer(Handler.make({ name: failing, onLlmEnd: () => Effect.fail("nope") })),
        // suspends, so its invocations hold a slot and move the active_callbacks gauge
        Dispatcher.toLayer(Handler.make({ name: `prom_slow_${unique}`, onLlmEnd: () => Effect.sleep("1 millis") })),
        GenAiMetrics.layer({ name: `gen_ai_${unique}` })
      ).pipe(Layer.provideMerge(Dispatcher.layer({ enableRecovery: false })))
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Layer.merge(handlers, Prometheus.layer({ port, serviceName: "prom-test" })),
        scope
      )
      const call = Effect.succeed({ content: "ok", usage: { promptTokens: 100, completionTokens: 20, totalTokens: 120 } })
        .pipe(Callbacks.instrument({ provider: "openai", model, userId: "secret-user" }))
      yield* Effect.provide(Effect.repeatN(call, 2), context).pipe(Logger.withMinimumLogLevel(LogLevel.None))

      const { status, text, type } = yield* scrape(`http://127.0.0.1:${port}/metrics`)
      assert.strictEqual(status, 200)
      assert.include(type ?? "", "text/plain")

      // counters are counters, histograms histograms, the gauge a gauge
      assert.strictEqual(typeOf(text, "callback_executions_total"), "counter")
      assert.strictEqual(typeOf(text, "callback_errors_total"), "counter")
      assert.strictEqual(typeOf(text, "callback_duration_seconds"), "histogram")
      assert.strictEqual(typeOf(text, "active_callbacks"), "gauge")
      assert.strictEqual(sample(text, "active_callbacks", {}), 0)
      assert.strictEqual(typeOf(text, "gen_ai_client_token_usage"), "histogram")
      assert.strictEqual(typeOf(text, "gen_ai_client_operation_duration"), "histogram")
      // units: seconds and tokens as the GenAI conventions say, the dispatcher's histogram in seconds
      const unitOf = (name: string) => new RegExp(`^# UNIT ${name} (\\S+)$`, "m").exec(text)?.[1]
      assert.strictEqual(unitOf("gen_ai_client_operation_duration"), "s")
      assert.strictEqual(unitOf("gen_ai_client_token_usage"), "{token}")
      assert.strictEqual(unitOf("callback_duration_seconds"), "s")
      assert.strictEqual(unitOf("callback_executions_total"), "{invocation}")

      // values after 3 calls
      assert.strictEqual(
        sample(text, "callback_executions_total", { callback_type: ok, phase: "start", status: "success" }),
        3
      )
      assert.strictEqual(sample(text, "callback_executions_total", { callback_type: ok, phase: "end", status: "success" }), 3)
      assert.strictEqual(
        sample(text, "callback_executions_total", { callback_type: failing, phase: "end", status: "failed" }),
        3
      )
      assert.strictEqual(sample(text, "callback_errors_total", { callback_type: failing, error_type: "failed" }), 3)
      assert.strictEqual(sample(text, "callback_duration_seconds_count", { callback_type: ok, phase: "end" }), 3)
      assert.strictEqual(sample(text, "callback_duration_seconds_bucket", { callback_type: ok, phase: "end", le: "+Inf" }), 3)
      assert.strictEqual(sample(text, "callback_duration_seconds_bucket", { callback_type: ok, phase: "end", le: "0.005" }), 3)

      const input = { gen_ai_request_model: model, gen_ai_token_type: "input", gen_ai_provider_name: "openai" }
      assert.strictEqual(sample(text, "gen_ai_client_token_usage_count", input), 3)
      assert.strictEqual(sample(text, "gen_ai_client_token_usage_sum", input), 300)
      assert.strictEqual(sample(text, "gen_ai_client_token_usage_bucket", { ...input, le: "64" }), 0)
      assert.strictEqual(sample(text, "gen_ai_client_token_usage_bucket", { ...input, le: "256" }), 3)
      assert.strictEqual(
        sample(text, "gen_ai_client_operation_duration_count", {
          gen_ai_request_model: model,
          gen_ai_operation_name: "chat"
        }),
        3
      )
      assert.notInclude(text, "secret-user")
      assert.include(text, `service_name="prom-test"`)

      // another path is not found
      assert.strictEqual((yield* scrape(`http://127.0.0.1:${port}/other`)).status, 404)

      // closing the layer's scope closes the server
      yield* Scope.close(scope, Exit.void)
      const after = yield* Effect.exit(scrape(`http://127.0.0.1:${port}/metrics`))
      assert.isTrue(Exit.isFailure(after))
    }))

  it.scopedLive("a port in use fails the layer with a PrometheusError naming host:port", () =>
    Effect.gen(function*() {
      const server = net.createServer()
      const port = yield* Effect.async<number>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed((server.address() as net.AddressInfo).port)))
      })
      yield* Effect.addFinalizer(() => Effect.async<void>((resume) => void server.close(() => resume(Effect.void))))
      const exit = yield* Effect.exit(Layer.build(Prometheus.layer({ port })))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
        assert.instanceOf(error, Prometheus.PrometheusError)
        const prometheusError = error as Prometheus.PrometheusError
        assert.strictEqual(prometheusError.reason, "AddressInUse")
        assert.strictEqual(prometheusError.port, port)
        assert.include(prometheusError.message, `127.0.0.1:${port}`)
      }
    }))

  it.effect("bad settings fail the layer naming the setting", () =>
    Effect.gen(function*() {
      for (const [options, name] of [[{ port: 0 }, "port"], [{ port: 70000 }, "port"], [{ port: 1.5 }, "port"], [{
        host: " "
      }, "host"], [{ endpoint: "metrics" }, "endpoint"]] as const) {
        const exit = yield* Effect.exit(Layer.build(Prometheus.layer(options)))
        assert.isTrue(Exit.isFailure(exit))
        assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), `${name}:`)
      }
      const fromEnv = yield* Effect.exit(
        Layer.build(Prometheus.layerConfig()).pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["CALLBACK_METRICS_PORT", "http"]])))
        )
      )
      assert.isTrue(Exit.isFailure(fromEnv))
      assert.include(String(Exit.isFailure(fromEnv) ? fromEnv.cause : ""), "CALLBACK_METRICS_PORT")
    }).pipe(Effect.scoped))
})
