import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer } from "effect"
import { SemanticConventions } from "../src/index.js"

const fromEnv = (value: string | undefined) =>
  Layer.setConfigProvider(
    ConfigProvider.fromMap(new Map(value === undefined ? [] : [["OTEL_SEMCONV_STABILITY_OPT_IN", value]]))
  )

const versionWith = (value: string | undefined) =>
  SemanticConventions.CurrentVersion.pipe(
    Effect.provide(SemanticConventions.layerConfig.pipe(Layer.provide(fromEnv(value))))
  )

describe("SemanticConventions", () => {
  it.effect("OTEL_SEMCONV_STABILITY_OPT_IN chooses the names: current by default, both with /dup, legacy", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* SemanticConventions.CurrentVersion, "current")
      assert.strictEqual(yield* versionWith(undefined), "current")
      assert.strictEqual(yield* versionWith("http,gen_ai_latest_experimental"), "current")
      assert.strictEqual(yield* versionWith("gen_ai_latest_experimental/dup"), "both")
      assert.strictEqual(yield* versionWith("gen_ai_legacy"), "legacy")
      assert.deepStrictEqual(SemanticConventions.names("both").provider, ["gen_ai.provider.name", "gen_ai.system"])
      assert.deepStrictEqual(SemanticConventions.names("legacy").inputTokens, ["gen_ai.usage.prompt_tokens"])
    }))

  it("request parameters of any spelling become gen_ai.request.* attributes; error.type is the HTTP status", () => {
    assert.deepStrictEqual(
      SemanticConventions.requestAttributes({ temperature: 0.2, max_output_tokens: 500, topP: 0.9, stop: ["\n"], user: "x" }),
      [
        ["gen_ai.request.temperature", 0.2],
        ["gen_ai.request.max_tokens", 500],
        ["gen_ai.request.top_p", 0.9],
        ["gen_ai.request.stop_sequences", ["\n"]]
      ]
    )
    assert.strictEqual(SemanticConventions.errorType({ response: { status: 429 } }, "HttpResponseError"), "429")
    assert.strictEqual(SemanticConventions.errorType({ statusCode: 503 }, "X"), "503")
    assert.strictEqual(SemanticConventions.errorType(new Error("boom"), "Error"), "Error")
  })
})
