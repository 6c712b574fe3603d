/**
 * An app process for the outbox tests (test/layers/OutboxRedis.test.ts): instrumented calls whose token
 * usage is recorded into Redis through the token-usage handler, with a durable outbox (SQLite file) in
 * front of the store. Usage of call i is a function of i, so the test knows what the store must hold.
 *
 * Arguments: `<redisUrl> <keyPrefix> <outboxFile> <mode: await|background> <from> <to> [pauseAt]`. It runs
 * calls [from, to) (32 at once), printing `done <n>` every 250 calls; with `pauseAt`, it runs the calls
 * before it, flushes, prints `paused` and waits for a line on its standard input before the rest. Then it
 * flushes the dispatcher (background
 * deliveries delivered: written or kept in the outbox), prints `idle`, and waits for the outbox to be empty
 * (`drained`), then waits to be killed. Records left by a previous process in the outbox file are replayed
 * from the start.
 */
import { Effect, Logger, LogLevel } from "effect"
import { Dispatcher, Outbox } from "../../src/index.js"
import { appCall, appLayer } from "./outboxUsage.js"

const [redisUrl, keyPrefix, outboxFile, mode, from, to, pauseAt] = process.argv.slice(2) as [
  string,
  string,
  string,
  "await" | "background",
  string,
  string,
  string | undefined
]

/** Resolves on the next line of standard input. */
const nextLine = Effect.async<void>((resume) => {
  process.stdin.once("data", () => resume(Effect.void))
})


const say = (line: string) => Effect.sync(() => process.stdout.write(`${line}\n`))

const layer = appLayer({ redisUrl, keyPrefix, outboxFile, mode: mode })

const program = Effect.gen(function*() {
  yield* say("ready")
  const start = Number(from)
  const end = Number(to)
  const pause = pauseAt === undefined ? end : Number(pauseAt)
  const run = (first: number, last: number) =>
    Effect.forEach(
    Array.from({ length: last - first }, (_, k) => first + k),
    (i) => Effect.zipRight(appCall(i), i % 250 === 249 ? say(`done ${i + 1}`) : Effect.void),
    { concurrency: 32, discard: true }
  )
  yield* run(start, pause)
  if (pause < end) {
    yield* Dispatcher.flush
    yield* say("paused")
    yield* nextLine
    yield* run(pause, end)
  }
  yield* Dispatcher.flush
  yield* say("idle")
  yield* Outbox.flush
  yield* say("drained")
  yield* Effect.never
})

program.pipe(
  Effect.provide(layer),
  Logger.withMinimumLogLevel(LogLevel.None),
  Effect.runPromise
).catch((error) => {
  process.stderr.write(`worker failed: ${String(error)}\n`)
  process.exit(1)
})
