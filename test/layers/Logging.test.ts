import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Fiber, HashMap, Layer, Logger, LogLevel, TestClock } from "effect"
import * as Logging from "../../layers/Logging.js"
import { Callbacks, Dispatcher } from "../../src/index.js"

interface Line {
  readonly level: string
  readonly message: string
  readonly annotations: Record<string, unknown>
}

const capture = () => {
  const lines: Array<Line> = []
  const logger = Logger.make<unknown, void>(({ annotations, logLevel, message }) => {
    lines.push({
      level: logLevel.label,
      message: Array.isArray(message) ? message.join(" ") : String(message),
      annotations: Object.fromEntries(HashMap.toEntries(annotations))
    })
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

const secret = "the launch code is 0000"
const messages = [{ role: "system", content: "be brief" }, { role: "user", content: secret }]
const response = {
  content: "an answer that is rather long",
  usage: { promptTokens: 12, completionTokens: 7, totalTokens: 19, cachedTokens: 4 },
  finishReason: "stop"
}
const options = { provider: "openai", model: "gpt-4o-mini", messages, userId: "alice" }

const withLogging = (logging: Layer.Layer<never, unknown, Dispatcher.Dispatcher>) =>
  logging.pipe(Layer.provideMerge(Dispatcher.layer()))

describe("Logging", () => {
  it.effect("one line per phase with call id, provider, model, user, duration and tokens; content redacted", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(
        Effect.sleep("250 millis").pipe(
          Effect.as(response),
          Callbacks.instrument({ ...options, callId: "call-1" })
        )
      )
      yield* TestClock.adjust("250 millis")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(lines.map((l) => [l.level, l.message]), [
        ["INFO", "llm start openai/gpt-4o-mini"],
        ["INFO", "llm end openai/gpt-4o-mini"]
      ])
      const [start, end] = lines as [Line, Line]
      assert.deepInclude(start.annotations, {
        handler: "logging",
        call_id: "call-1",
        provider: "openai",
        model: "gpt-4o-mini",
        user_id: "alice",
        phase: "start",
        message_count: 2,
        input_chars: "be brief".length + secret.length
      })
      assert.deepInclude(end.annotations, {
        call_id: "call-1",
        user_id: "alice",
        phase: "end",
        duration_ms: 250,
        prompt_tokens: 12,
        completion_tokens: 7,
        total_tokens: 19,
        cached_tokens: 4,
        finish_reason: "stop",
        output_chars: response.content.length
      })
      const everything = JSON.stringify(lines)
      assert.notInclude(everything, "launch code")
      assert.notInclude(everything, "rather long")
    }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer()), layer)))
  })

  it.effect("errors: logged at Error with their type and message; interruptions at Warning", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      class RateLimited {
        readonly _tag = "RateLimited"
        readonly message = "slow down"
      }
      yield* Effect.exit(Effect.fail(new RateLimited()).pipe(Callbacks.instrument(options)))
      yield* Effect.exit(Effect.interrupt.pipe(Callbacks.instrument(options)))
      const errors = lines.filter((l) => l.annotations.phase === "error")
      assert.strictEqual(errors.length, 2)
      assert.strictEqual(errors[0]!.level, "ERROR")
      assert.deepInclude(errors[0]!.annotations, {
        error_type: "RateLimited",
        error_message_length: "slow down".length,
        error_kind: "failure",
        interrupted: false,
        user_id: "alice"
      })
      assert.notProperty(errors[0]!.annotations, "error_message")
      assert.strictEqual(errors[1]!.level, "WARN")
      assert.deepInclude(errors[1]!.annotations, { error_kind: "interrupted", interrupted: true })
    }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer()), layer)))
  })

  class ProviderError {
    readonly _tag = "ProviderError"
    readonly status = 429
    readonly message = `rate limited while processing: ${secret}`
  }
  const failing = Effect.exit(Effect.fail(new ProviderError()).pipe(Callbacks.instrument(options)))

  it.effect("a provider error quoting the prompt is redacted: its length, type, kind and status only", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      yield* failing
      assert.notInclude(JSON.stringify(lines), "launch code")
      const error = lines.find((l) => l.annotations.phase === "error")!
      assert.deepInclude(error.annotations, {
        error_type: "ProviderError",
        error_status: 429,
        error_message_length: new ProviderError().message.length
      })
    }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer()), layer)))
  })

  it.effect("with includeContent the error message is logged, truncated", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      yield* failing
      const error = lines.find((l) => l.annotations.phase === "error")!
      assert.strictEqual(error.annotations.error_message, new ProviderError().message)
    }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer({ includeContent: true })), layer)))
  })

  describe("tool runs", () => {
    const tool = Effect.fail(new ProviderError()).pipe(
      Callbacks.instrumentTool({ name: "lookup", params: { query: secret }, parentCallId: "call-7", toolCallId: "tc_1" }),
      Effect.exit,
      Effect.zipRight(Effect.succeed({ answer: secret }).pipe(Callbacks.instrumentTool({ name: "lookup", params: { query: "q" } })))
    )

    it.effect("tool start, end and error lines with the tool, its run and parent; params, results and error text redacted", () => {
      const { layer, lines } = capture()
      return Effect.gen(function*() {
        yield* tool
        assert.deepStrictEqual(lines.map((l) => [l.level, l.message]), [
          ["INFO", "tool start lookup"],
          ["ERROR", "tool error lookup: ProviderError"],
          ["INFO", "tool start lookup"],
          ["INFO", "tool end lookup"]
        ])
        assert.deepInclude(lines[0]!.annotations, {
          phase: "tool_start",
          tool_name: "lookup",
          tool_call_id: "tc_1",
          parent_call_id: "call-7",
          tool_params_chars: JSON.stringify({ query: secret }).length
        })
        assert.deepInclude(lines[1]!.annotations, { error_type: "ProviderError", error_kind: "failure" })
        assert.deepInclude(lines[3]!.annotations, { tool_result_chars: JSON.stringify({ answer: secret }).length })
        assert.notInclude(JSON.stringify(lines), "launch code")
      }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer()), layer)))
    })

    it.effect("with includeContent the params, result and error text are logged", () => {
      const { layer, lines } = capture()
      return Effect.gen(function*() {
        yield* tool
        assert.strictEqual(lines[0]!.annotations.tool_params, JSON.stringify({ query: secret }))
        assert.strictEqual(lines[1]!.annotations.error_message, new ProviderError().message)
        assert.strictEqual(lines[3]!.annotations.tool_result, JSON.stringify({ answer: secret }))
      }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer({ includeContent: true })), layer)))
    })
  })

  it.effect("includeContent: messages and response logged, truncated", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      yield* Effect.succeed(response).pipe(Callbacks.instrument(options))
      const [start, end] = lines as [Line, Line]
      assert.deepStrictEqual(start.annotations.messages, [
        { role: "system", content: "be brief" },
        { role: "user", content: `the launch…[+${secret.length - 10} chars]` }
      ])
      assert.strictEqual(end.annotations.response, `an answer …[+${response.content.length - 10} chars]`)
    }).pipe(
      Effect.provide(Layer.merge(withLogging(Logging.layer({ includeContent: true, maxContentLength: 10 })), layer))
    )
  })

  it.effect("the level is a minimum: Error keeps only errors, None nothing", () =>
    Effect.gen(function*() {
      const onlyErrors = capture()
      yield* Effect.gen(function*() {
        yield* Effect.succeed(response).pipe(Callbacks.instrument(options))
        yield* Effect.exit(Effect.fail("boom").pipe(Callbacks.instrument(options)))
      }).pipe(Effect.provide(Layer.merge(withLogging(Logging.layer({ level: "Error" })), onlyErrors.layer)))
      assert.deepStrictEqual(onlyErrors.lines.map((l) => l.annotations.phase), ["error"])

      const none = capture()
      yield* Effect.exit(Effect.fail("boom").pipe(Callbacks.instrument(options))).pipe(
        Effect.provide(Layer.merge(withLogging(Logging.layer({ level: "None" })), none.layer))
      )
      assert.strictEqual(none.lines.length, 0)
    }))

  it.effect("CALLBACK_LOG_LEVEL sets the level; a bad value fails the layer naming it", () =>
    Effect.gen(function*() {
      const fromEnv = (value: string) =>
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["CALLBACK_LOG_LEVEL", value]])))
      const warnings = capture()
      yield* Effect.gen(function*() {
        yield* Effect.succeed(response).pipe(Callbacks.instrument(options))
        yield* Effect.exit(Effect.fail("boom").pipe(Callbacks.instrument(options)))
      }).pipe(
        Effect.provide(Layer.merge(withLogging(Logging.layerConfig()), warnings.layer)),
        fromEnv("WARNING")
      )
      assert.deepStrictEqual(warnings.lines.map((l) => l.level), ["ERROR"])

      const bad = yield* Effect.exit(Layer.build(withLogging(Logging.layerConfig())).pipe(fromEnv("LOUD")))
      assert.isTrue(Exit.isFailure(bad))
      assert.include(String(Exit.isFailure(bad) ? bad.cause : ""), "CALLBACK_LOG_LEVEL")
    }).pipe(Effect.scoped))

  it.effect("bad options fail the layer naming the option", () =>
    Effect.gen(function*() {
      for (
        const [opts, name] of [
          [{ level: "LOUD" as LogLevel.Literal }, "level"],
          [{ maxContentLength: -1 }, "maxContentLength"]
        ] as const
      ) {
        const exit = yield* Effect.exit(Layer.build(withLogging(Logging.layer(opts))))
        assert.isTrue(Exit.isFailure(exit))
        assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), `${name}:`)
      }
    }).pipe(Effect.scoped))

  it("truncate keeps short text and says how much was cut", () => {
    assert.strictEqual(Logging.truncate("abc", 3), "abc")
    assert.strictEqual(Logging.truncate("abcdef", 2), "ab…[+4 chars]")
    assert.strictEqual(Logging.parseLevel("critical"), LogLevel.Fatal)
  })
})
