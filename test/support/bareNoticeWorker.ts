/**
 * A process whose instrumented calls have no dispatcher in context: some
 * while debug logs are off, then several at once, of each kind, with them on,
 * then one with a dispatcher. It prints every log line as JSON, then the
 * calls' results.
 */
import { Effect, Logger, LogLevel, Option } from "effect"
import { Callbacks, Dispatcher } from "../../src/index.js"

const lines: Array<{ readonly level: string; readonly message: unknown }> = []
const capture = Logger.replace(
  Logger.defaultLogger,
  Logger.make(({ logLevel, message }) => {
    lines.push({ level: logLevel.label, message })
  })
)
const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }
const call = Effect.succeed("ok").pipe(Callbacks.instrument(options))
const tool = Effect.succeed("ran").pipe(Callbacks.instrumentTool({ name: "search" }))
const byHand = Callbacks.begin(options)

const program = Effect.gen(function*() {
  const quiet = yield* Effect.all([call, tool, byHand])
  const loud = yield* Effect.all([call, tool, byHand, call, tool, byHand], { concurrency: "unbounded" }).pipe(
    Logger.withMinimumLogLevel(LogLevel.Debug)
  )
  const withDispatcher = yield* call.pipe(Logger.withMinimumLogLevel(LogLevel.Debug), Effect.provide(Dispatcher.layer()))
  const show = (result: unknown) => Option.isOption(result) ? Option.isNone(result) ? "none" : "some" : result
  return { quiet: quiet.map(show), loud: loud.map(show), withDispatcher }
})

Effect.runPromise(program.pipe(Effect.provide(capture))).then((results) => {
  process.stdout.write(JSON.stringify({ lines, results }) + "\n")
})
