/**
 * `npm run demo`: a realistic workload through `@effect/ai-openai` with every layer of the library,
 * against the project's mock OpenAI server on a loopback port. No services needed; Redis when asked.
 *
 * 200 calls (by default) from 20 users across 3 models, a third of them streamed, ~8% answered with a
 * 429 or a 500, ~10% without usage. Handlers: detailed token usage (memory, or Redis with `--redis` /
 * `REDIS_URL`), cost, GenAI metrics, a flaky handler (fails, hangs past its timeout, fails once and is
 * retried), a slow background handler, and a ledger that counts every call's usage on its own. The
 * Prometheus endpoint is up while the demo runs (`--keep-metrics` keeps it up until Ctrl-C).
 *
 * After the run it prints the usage per user read back from the token store, the health of every
 * handler, a summary of the callback and GenAI metrics, and the proof that no call failed because of a
 * handler; it exits 1 when that proof does not hold, 2 on bad flags.
 *
 * @since 0.1.0
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Tool from "@effect/ai/Tool"
import * as Toolkit from "@effect/ai/Toolkit"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as Usage from "@effect/cli/Usage"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import type * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import { redisLocation } from "../cli/Cli.js"
import * as AiLanguageModel from "../layers/AiLanguageModel.js"
import * as CostLayer from "../layers/Cost.js"
import * as GenAiMetrics from "../layers/GenAiMetrics.js"
import * as Prometheus from "../layers/Prometheus.js"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import * as BillingCycle from "../src/BillingCycle.js"
import * as Dispatcher from "../src/Dispatcher.js"
import * as TokenStore from "../src/TokenStore.js"
import * as MockOpenAiServer from "../test/support/MockOpenAiServer.js"
import * as Handlers from "./Handlers.js"
import * as Progress from "./Progress.js"
import * as Report from "./Report.js"
import * as Workload from "./Workload.js"

// =============================================================================
// Flags
// =============================================================================

const bounded = (name: string, min: number, max: number) =>
  Options.integer(name).pipe(
    Options.withSchema(
      Schema.Number.pipe(
        Schema.filter((n) => Number.isSafeInteger(n) && n >= min && n <= max, {
          message: (issue) => `--${name}: expected an integer from ${min} to ${max}, got ${String(issue.actual)}`
        })
      )
    )
  )

const flags = {
  calls: bounded("calls", 1, 100_000).pipe(
    Options.withPseudoName("N"),
    Options.withDescription("Number of LLM calls"),
    Options.withDefault(200)
  ),
  users: bounded("users", 1, 9_999).pipe(
    Options.withPseudoName("N"),
    Options.withDescription("Number of users (user-01, user-02, ...)"),
    Options.withDefault(20)
  ),
  concurrency: bounded("concurrency", 1, 1_024).pipe(
    Options.withPseudoName("N"),
    Options.withDescription("Calls in flight at once"),
    Options.withDefault(16)
  ),
  redis: Options.text("redis").pipe(
    Options.withPseudoName("URL"),
    Options.withDescription(
      "Keep token usage in Redis (redis:// or rediss://), under a key prefix of its own per run; " +
        "default: REDIS_URL if set, else in memory"
    ),
    Options.withSchema(
      Schema.String.pipe(
        Schema.filter(RedisTokenStore.isRedisUrl, {
          message: (issue) => `--redis: expected a redis:// or rediss:// URL, got ${String(issue.actual)}`
        })
      )
    ),
    Options.withFallbackConfig(Config.option(Config.string("REDIS_URL")).pipe(Config.map(Option.getOrUndefined))),
    Options.map((url) => (url === undefined || url === "" ? Option.none() : Option.some(url)))
  ),
  metricsPort: bounded("metrics-port", 1, 65_535).pipe(
    Options.withPseudoName("PORT"),
    Options.withDescription("Port of the Prometheus endpoint on 127.0.0.1 (a free one if it is taken)"),
    Options.withDefault(9464)
  ),
  keepMetrics: Options.boolean("keep-metrics").pipe(
    Options.withDescription("Stay up after the run, serving the metrics, until Ctrl-C")
  ),
  seed: Options.integer("seed").pipe(
    Options.withPseudoName("N"),
    Options.withDescription("Seed of the workload: the same seed makes the same calls and answers"),
    Options.withDefault(42)
  ),
  verbose: Options.boolean("verbose").pipe(
    Options.withDescription("Show the library's warnings too (a line per handler failure)")
  )
}

/**
 * The demo's settings, from its flags.
 *
 * @since 0.1.0
 * @category models
 */
export interface DemoOptions {
  readonly calls: number
  readonly users: number
  readonly concurrency: number
  readonly redis: Option.Option<string>
  readonly metricsPort: number
  readonly keepMetrics: boolean
  readonly seed: number
  readonly verbose: boolean
}

// =============================================================================
// Errors
// =============================================================================

/**
 * Why the demo did not complete: a service it needs failed (`Failed`), or the proof did not hold
 * (`ProofFailed`).
 *
 * @since 0.1.0
 * @category errors
 */
export class DemoError extends Data.TaggedError("DemoError")<{
  readonly reason: "Failed" | "ProofFailed"
  readonly message: string
}> {}

/**
 * The exit code of a failed run: 2 for bad flags, 1 otherwise.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

const failed = (what: string) => (error: { readonly message: string }) =>
  new DemoError({ reason: "Failed", message: `${what}: ${error.message}` })

// =============================================================================
// Pieces
// =============================================================================

const freePort: Effect.Effect<number, DemoError> = Effect.async((resume) => {
  const server = Net.createServer()
  server.once("error", (error) => resume(Effect.fail(failed("no free port")(error))))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/**
 * Serves the Prometheus endpoint for the scope's lifetime on `port`, or on a free port when `port` is
 * taken; returns its URL.
 */
const serveMetrics = (port: number): Effect.Effect<string, DemoError, Scope.Scope> => {
  const serve = (port: number) => Effect.as(Layer.build(Prometheus.layer({ host: "127.0.0.1", port })), port)
  return serve(port).pipe(
    Effect.catchIf(
      (error) => error._tag === "PrometheusError" && error.reason === "AddressInUse",
      () =>
        Effect.flatMap(freePort, (free) =>
          Effect.zipLeft(
            serve(free),
            Console.log(`  port ${port} is taken: serving the metrics on port ${free} instead`)
          ))
    ),
    Effect.mapError((error) =>
      error instanceof DemoError ? error : failed("cannot serve the metrics")(error)
    ),
    Effect.map((port) => `http://127.0.0.1:${port}/metrics`)
  )
}

const scrape = (url: string): Effect.Effect<string, DemoError> =>
  Effect.tryPromise({
    try: (signal) => fetch(url, { signal }).then((response) => response.text()),
    catch: (error) => failed(`cannot scrape ${url}`)({ message: String(error) })
  }).pipe(
    Effect.timeoutFail({
      duration: Duration.seconds(5),
      onTimeout: () => failed(`cannot scrape ${url}`)({ message: "no answer within 5 seconds" })
    })
  )

/** The demo's one tool: the support assistant looks an order up. */
const LookupOrder = Tool.make("lookup_order", {
  description: "Looks an order up by its id",
  parameters: { orderId: Schema.String },
  success: Schema.Struct({ orderId: Schema.String, status: Schema.String })
})

const DemoTools = Toolkit.make(LookupOrder)

const DemoToolHandlers = DemoTools.toLayer({
  lookup_order: ({ orderId }) => Effect.succeed({ orderId, status: "shipped" })
})

const promptOf = (call: Workload.PlannedCall) => [
  { role: "system" as const, content: call.system },
  { role: "user" as const, content: call.prompt }
]

/** One call of the workload, through the instrumented `LanguageModel` of its model. */
const runCall = (
  call: Workload.PlannedCall,
  model: Context.Context<LanguageModel.LanguageModel>,
  tools: Context.Context<Tool.Handler<"lookup_order">>
): Effect.Effect<Report.Outcome> => {
  const prompt = promptOf(call)
  const text = call.tools
    ? call.streamed
      ? LanguageModel.streamText({ prompt, toolkit: DemoTools }).pipe(
        Stream.runFold("", (text, part) => (part.type === "text-delta" ? text + part.delta : text))
      )
      : Effect.map(LanguageModel.generateText({ prompt, toolkit: DemoTools }), (response) => response.text)
    : call.streamed
    ? LanguageModel.streamText({ prompt }).pipe(
      Stream.runFold("", (text, part) => (part.type === "text-delta" ? text + part.delta : text))
    )
    : Effect.map(LanguageModel.generateText({ prompt }), (response) => response.text)
  return text.pipe(
    Effect.provide(model),
    Effect.provide(tools),
    AiLanguageModel.withCallContext({
      userId: call.userId,
      tags: ["demo", call.streamed ? "stream" : "generate"],
      metadata: { demoCall: call.index }
    }),
    Effect.exit,
    Effect.map((exit) => ({ call, exit }))
  )
}

const heading = (title: string) => Console.log(`\n${title}`)

const millisSince = (start: number) => Effect.map(Clock.currentTimeMillis, (now) => now - start)

// =============================================================================
// Run
// =============================================================================

/**
 * Runs the demo: starts the mock server, the metrics endpoint and the layers, runs the workload, prints
 * the reports, checks the proof and drains. Fails with a `DemoError` when a service it needs fails or
 * when the proof does not hold.
 *
 * @since 0.1.0
 * @category running
 */
export const run = (options: DemoOptions): Effect.Effect<void, DemoError> =>
  Effect.gen(function*() {
    const begin = yield* Clock.currentTimeMillis
    const calls = Workload.plan({ calls: options.calls, users: options.users, seed: options.seed })
    const streamed = calls.filter((call) => call.streamed).length
    yield* Console.log(
      `effect-llm-callbacks demo: ${options.calls} calls from ${Math.min(options.users, options.calls)} users ` +
        `across ${Workload.models.join(", ")} (${streamed} streamed), concurrency ${options.concurrency}, ` +
        `seed ${options.seed}`
    )

    // The provider: the mock OpenAI server, answering each call as the plan says and counting what it sent.
    const tally = yield* Ref.make(Workload.emptyTally)
    const server = yield* MockOpenAiServer.make({ script: Workload.script(calls, tally), maxRecorded: 0 })
    yield* Console.log(`  mock OpenAI server   ${server.url}`)
    const metricsUrl = yield* serveMetrics(options.metricsPort)
    yield* Console.log(`  prometheus           ${metricsUrl}`)

    // The token store: Redis under a prefix of this run's own, else memory.
    const cycle = yield* BillingCycle.current()
    const store = Option.match(options.redis, {
      onNone: () => TokenStore.layerMemory,
      onSome: (url) => {
        const keyPrefix = `demo:${begin}`
        return RedisTokenStore.layer({ url, keyPrefix, connectTimeout: "3 seconds", commandTimeout: "3 seconds" }).pipe(
          Layer.tap(() =>
            Console.log(
              `  token store          Redis ${redisLocation(url)}, key prefix ${keyPrefix}\n` +
                `                       (read it back: effect-llm-callbacks usage --redis URL --key-prefix ${keyPrefix})`
            )
          )
        )
      }
    })
    if (Option.isNone(options.redis)) yield* Console.log("  token store          in memory (--redis URL or REDIS_URL for Redis)")

    // The library's layers and the demo's own handlers.
    const written = yield* Ref.make(0)
    const ledger = yield* Handlers.ledger
    const callbacks = yield* Layer.build(
      Layer.mergeAll(
        TokenUsage.layerDetailed({ cycleStartDate: cycle }),
        CostLayer.layer({ prices: Workload.prices }),
        GenAiMetrics.layerWithPrices(Workload.prices),
        Dispatcher.toLayer(Handlers.flaky({ seed: options.seed })),
        Dispatcher.toLayer(Handlers.auditLog(written)),
        Dispatcher.toLayer(ledger.handler)
      ).pipe(
        Layer.provideMerge(
          Layer.merge(
            // The demo's own policy: library defaults (30 s timeout, retries from 1 s) suit real providers.
            Dispatcher.layer({ timeout: "10 seconds", retryDelay: "50 millis", shutdownTimeout: "10 seconds" }),
            store
          )
        )
      )
    ).pipe(
      Effect.mapError((error) =>
        error._tag === "TokenStoreError" && options.redis._tag === "Some"
          ? failed(`cannot reach Redis at ${redisLocation(options.redis.value)}`)(error)
          : failed("cannot build the callback layers")(error)
      )
    )

    // One instrumented LanguageModel per model, over one OpenAI client pointed at the mock server.
    const client = yield* Layer.build(
      MockOpenAiServer.layerOpenAiClient.pipe(Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server)))
    )
    const models = new Map<string, Context.Context<LanguageModel.LanguageModel>>()
    for (const model of Workload.models) {
      models.set(
        model,
        yield* Layer.build(
          OpenAiLanguageModel.model(model).pipe(
            AiLanguageModel.withCallbacks({ model, server: { address: "127.0.0.1", port: server.port } }),
            Layer.provide(Layer.succeedContext(client))
          )
        )
      )
    }

    // The workload.
    yield* heading(`Running ${calls.length} calls`)
    const progress = yield* Progress.make({ total: calls.length })
    const started = yield* Clock.currentTimeMillis
    const tools = yield* Layer.build(DemoToolHandlers)
    const outcomes = yield* Effect.forEach(
      calls,
      (call) =>
        Effect.tap(runCall(call, models.get(call.model)!, tools), (outcome) => progress.step(Exit.isSuccess(outcome.exit))),
      { concurrency: options.concurrency }
    ).pipe(Effect.provide(callbacks))
    yield* progress.end
    const elapsed = yield* millisSince(started)
    const before = yield* Effect.provide(Dispatcher.health, callbacks)
    yield* Console.log(
      `  ${calls.length} calls in ${(elapsed / 1000).toFixed(1)} s; background deliveries still pending: ${before.pending}`
    )
    const drainStart = yield* Clock.currentTimeMillis
    yield* Effect.provide(Dispatcher.flush, callbacks)
    yield* Console.log(
      `  background handlers drained in ${yield* millisSince(drainStart)} ms ` +
        `(audit-log wrote ${yield* Ref.get(written)} records); no call waited for them`
    )

    // Reports.
    const tokenStore = Effect.provide(TokenStore.TokenStore, callbacks)
    const rows = yield* Effect.flatMap(tokenStore, (store) =>
      Effect.flatMap(store.users(cycle), (users) =>
        Effect.forEach(users, (user) => Effect.map(store.stats(user, cycle), (stats) => ({ user, stats })))))
      .pipe(Effect.mapError(failed("cannot read the token store")))
    const ledgerState = yield* ledger.state
    yield* heading(`Token usage per user, billing cycle ${cycle} (read back from the token store)`)
    yield* Console.log(Report.usageTable(rows, ledgerState))
    yield* Console.log(Report.lifecycleSummary(ledgerState, calls))

    const health = yield* Effect.provide(Dispatcher.health, callbacks)
    yield* heading("Handler health (Dispatcher.health)")
    yield* Console.log(Report.healthTable(health))

    yield* heading("Metrics")
    const snapshot = yield* Metric.snapshot
    yield* Console.log(Report.metricsSummary(snapshot, health.handlers.map((h) => h.name)))
    const body = yield* scrape(metricsUrl)
    yield* Console.log(Report.scrapeSummary(metricsUrl, body))

    yield* heading("Proof")
    const verdict = Report.verify({ outcomes, server: yield* Ref.get(tally), ledger: ledgerState, store: rows })
    yield* Console.log(verdict.lines.join("\n"))

    if (!verdict.holds) {
      return yield* new DemoError({
        reason: "ProofFailed",
        message: "the calls' results or the token counts differ from what the provider sent (see Proof)"
      })
    }
    if (options.keepMetrics) {
      yield* Console.log(`\nServing the metrics on ${metricsUrl} until Ctrl-C.`)
      yield* Effect.never.pipe(Effect.onInterrupt(() => Console.log("Stopping: draining and closing.")))
    }
    yield* Console.log(`\nDraining and closing (${((yield* millisSince(begin)) / 1000).toFixed(1)} s so far).`)
  }).pipe(
    Effect.scoped,
    (self) => (options.verbose ? Logger.withMinimumLogLevel(self, LogLevel.Warning) : self)
  )


// =============================================================================
// Command line
// =============================================================================

/**
 * The demo's command line.
 *
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("demo", flags, (options) => run(options)).pipe(
  Command.withDescription(
    "Runs LLM calls through @effect/ai-openai against a local mock OpenAI server with the library's layers, " +
      "then prints usage per user, handler health, metrics and the proof that no call failed because of a handler"
  )
)

const usageText = (): string =>
  HelpDoc.toAnsiText(HelpDoc.sequence(HelpDoc.h1("USAGE"), Usage.getHelp(Command.getUsage(command))))

/**
 * Runs the command line on `process.argv`: bad flags print the problem and the usage on stderr and fail
 * with exit code 2; a failed run prints why and fails with exit code 1.
 *
 * @since 0.1.0
 * @category running
 */
export const main = (argv: ReadonlyArray<string>) =>
  Command.run(command, { name: "effect-llm-callbacks demo", version: "0.1.0" })(argv).pipe(
    // Every handler failure is logged as a warning: the health report tells the story instead
    // (`--verbose` shows them).
    Logger.withMinimumLogLevel(LogLevel.Error),
    Effect.catchAll((error) =>
      ValidationError.isValidationError(error)
        // @effect/cli has printed the problem already.
        ? Effect.zipRight(Console.error(usageText()), Effect.fail(new ExitCode({ code: 2 })))
        : Effect.zipRight(Console.error(`\nError: ${error.message}`), Effect.fail(new ExitCode({ code: 1 })))
    )
  )

NodeRuntime.runMain(main(process.argv).pipe(Effect.provide(NodeContext.layer)), {
  disableErrorReporting: true,
  teardown: (exit, onExit) =>
    onExit(
      Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause) ? 0 : Option.match(Cause.failureOption(exit.cause), {
        onNone: () => 1,
        onSome: (error) => (error instanceof ExitCode ? error.code : 1)
      })
    )
})
