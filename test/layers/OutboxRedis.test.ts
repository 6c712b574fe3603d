/**
 * No usage record lost, end to end: an app process (test/support/outboxWorker.ts) records the usage of
 * its calls into a Redis of the test's own (append-only file, so that a stopped server comes back with
 * its data) through the token-usage handler and a durable outbox (SQLite file).
 *
 * Per mode (await, background), 10,000 calls: the first app process makes 2,500 with Redis up, Redis is
 * stopped, it makes 2,500 more (their records kept in the outbox file) and is killed with SIGKILL. A
 * second process starts during the outage (the store connects in the background), replays the outbox
 * file and makes the last 5,000 calls; Redis is started again after `OUTBOX_OUTAGE_SECONDS` (default 6;
 * the figure, 60, by setting it) of outage. Once the second process says its outbox is drained,
 * Redis holds exactly the usage of the 10,000 calls: 0 lost, 0 counted twice.
 *
 * A rolling restart during an outage (8,000 calls): the new process starts while the old one is still
 * making calls, both keep records in the one file at once, the old one is killed; once Redis is back the
 * new process writes its own records and those the old one left after it started (read again from the
 * file), and Redis holds the usage of every call once.
 *
 * The processes are killed at a quiescent point (their calls returned, the dispatcher flushed): a
 * background delivery still in a handler's buffer when the process dies is not yet in the outbox.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import { freePort } from "../support/globalSetup.js"
import { usageOf } from "../support/outboxUsage.js"
import { bannerWithoutRedis, skipWithoutRedis } from "../support/redis.js"

bannerWithoutRedis("test/layers/OutboxRedis.test.ts")

const root = path.resolve(import.meta.dirname, "../..")
const worker = path.join(root, "test", "support", "outboxWorker.ts")
const shutdownWorker = path.join(root, "test", "support", "shutdownWorker.ts")
const outageSeconds = Number(process.env["OUTBOX_OUTAGE_SECONDS"] ?? 6)
const calls = 10_000


/** A redis-server with an append-only file in `dir`, on `port`: stopping and starting it keeps the data. */
const startRedis = (dir: string, port: number) =>
  Effect.async<ChildProcess, Error>((resume) => {
    const child = spawn("redis-server", [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dir,
      "--appendonly",
      "yes",
      "--appendfsync",
      "always",
      "--save",
      ""
    ], { stdio: ["ignore", "pipe", "pipe"] })
    child.once("error", (error) => resume(Effect.fail(error)))
    const lines = readline.createInterface({ input: child.stdout! })
    lines.on("line", (line) => {
      if (line.includes("Ready to accept connections")) resume(Effect.succeed(child))
    })
  })

const stop = (child: ChildProcess, signal: NodeJS.Signals) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    child.once("exit", () => resume(Effect.void))
    child.kill(signal)
  })

interface App {
  readonly child: ChildProcess
  /** Resolves when the process prints `line`. */
  readonly until: (line: string) => Effect.Effect<void>
  /** Lets a paused process go on. */
  readonly resume: Effect.Effect<void>
  /** Every line the process printed so far. */
  readonly lines: ReadonlyArray<string>
}

const startApp = (args: ReadonlyArray<string>, file: string = worker): Effect.Effect<App> =>
  Effect.sync(() => {
    // The worker itself, not a wrapper (tsx's command line runs it in a child of its own, which a
    // SIGKILL of the wrapper would not reach).
    const child = spawn(process.execPath, ["--import", "tsx", file, ...args], {
      cwd: root,
      stdio: ["pipe", "pipe", "pipe"]
    })
    const seen = new Set<string>()
    const lines: Array<string> = []
    const waiting = new Map<string, Array<() => void>>()
    let stderr = ""
    child.stderr!.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)))
    readline.createInterface({ input: child.stdout! }).on("line", (line) => {
      seen.add(line)
      lines.push(line)
      for (const resume of waiting.get(line) ?? []) resume()
      waiting.delete(line)
    })
    return {
      child,
      lines,
      resume: Effect.sync(() => void child.stdin!.write("continue\n")),
      until: (line) =>
        Effect.async<void>((resume) => {
          if (seen.has(line)) return resume(Effect.void)
          const onExit = () => resume(Effect.dieMessage(`the app exited before printing ${line}: ${stderr}`))
          child.once("exit", onExit)
          waiting.set(line, [...(waiting.get(line) ?? []), () => {
            child.off("exit", onExit)
            resume(Effect.void)
          }])
        })
    }
  })

/** Fails unless Redis holds exactly the usage of calls [0, calls): every call once. */
const exactUsage = (url: string, keyPrefix: string, calls: number) =>
  Effect.gen(function*() {
    const stored = yield* Effect.gen(function*() {
      const store = yield* RedisTokenStore.make({ url, keyPrefix })
      const users = yield* store.users("2026-12-01")
      return yield* Effect.forEach(users, (user) => Effect.map(store.stats(user, "2026-12-01"), (stats) => [user, stats] as const))
    }).pipe(Effect.scoped, Effect.orDie)
    const expected = new Map<string, { prompt: number; completion: number }>()
    for (let i = 0; i < calls; i++) {
      const user = `user-${i % 13}`
      const sum = expected.get(user) ?? { prompt: 0, completion: 0 }
      sum.prompt += usageOf(i).promptTokens
      sum.completion += usageOf(i).completionTokens
      expected.set(user, sum)
    }
    assert.strictEqual(stored.length, 13)
    for (const [user, stats] of stored) {
      const sum = expected.get(user)!
      assert.deepStrictEqual(
        [stats.promptTokens, stats.completionTokens, stats.totalTokens],
        [sum.prompt, sum.completion, sum.prompt + sum.completion],
        user
      )
    }
  })

/**
 * What one test runs on: a directory (Redis' append-only file, the outbox file), a free port for its
 * Redis, and the processes it starts there (its Redis, its apps), all ended with the scope.
 */
const outboxRun = (name: string) =>
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), `outbox-${name}-`))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    )
    const port = yield* Effect.promise(freePort)
    const processes: Array<ChildProcess> = []
    yield* Effect.addFinalizer(() => Effect.forEach(processes, (child) => stop(child, "SIGKILL"), { discard: true }))
    return {
      url: `redis://127.0.0.1:${port}`,
      keyPrefix: `outbox_${name}`,
      outboxFile: path.join(dir, "outbox.db"),
      startRedis: Effect.tap(startRedis(dir, port), (child) => processes.push(child)),
      startApp: (args: ReadonlyArray<string>, file?: string) =>
        Effect.tap(startApp(args, file), (app) => processes.push(app.child))
    }
  })

/** Waits (60 s at most) for the app's output to hold a line starting with `prefix`, and gives it. */
const lineStarting = (app: App, prefix: string) =>
  Effect.suspend(() => {
    const line = app.lines.find((line) => line.startsWith(prefix))
    return line === undefined ? Effect.fail("not yet" as const) : Effect.succeed(line)
  }).pipe(
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(3_000)))),
    Effect.orDieWith(() => new Error(`the app never printed a line starting with ${prefix}`))
  )

const drained = (app: App) =>
  app.until("drained").pipe(Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => "the outbox did not drain" }))

describe.skipIf(skipWithoutRedis)("the outbox across a Redis outage and a killed app (real processes)", () => {
  for (const mode of ["await", "background"] as const) {
    it.scopedLive(
      `${mode} mode: ${calls.toLocaleString("en-US")} calls, Redis stopped ${outageSeconds} s, the app SIGKILLed during the outage: 0 lost, 0 double`,
      () =>
        Effect.gen(function*() {
          const { keyPrefix, outboxFile, startApp, startRedis, url } = yield* outboxRun(mode)
          const redis = yield* startRedis
          // First process: a quarter with Redis up, then Redis stops, another quarter, then SIGKILL.
          const first = yield* startApp([url, keyPrefix, outboxFile, mode, "0", String(calls / 2), String(calls / 4)])
          yield* first.until("paused")
          yield* stop(redis, "SIGTERM")
          yield* first.resume
          yield* first.until("idle")
          yield* stop(first.child, "SIGKILL")
          // Second process, during the outage: replays the file, makes the other half.
          const second = yield* startApp([url, keyPrefix, outboxFile, mode, String(calls / 2), String(calls)])
          yield* second.until("idle")
          yield* Effect.sleep(`${outageSeconds} seconds`)
          yield* startRedis
          yield* drained(second)
          // What Redis holds is what the calls used: every call once.
          yield* exactUsage(url, keyPrefix, calls)
        }),
      240_000
    )
  }

  it.scopedLive(
    "a rolling restart during an outage: two processes on one outbox file at once, the old one killed: 0 lost, 0 double",
    () =>
      Effect.gen(function*() {
        const { keyPrefix, outboxFile, startApp, startRedis, url } = yield* outboxRun("rolling")
        const total = 8_000
        const redis = yield* startRedis
        // The old process: 1,000 calls with Redis up, then Redis stops.
        const old = yield* startApp([url, keyPrefix, outboxFile, "await", "0", String(total / 2), String(total / 8)])
        yield* old.until("paused")
        yield* stop(redis, "SIGTERM")
        // The new process starts (it replays what the file holds now); then the old one goes on: both
        // keep the records of their calls in the one file at once.
        const young = yield* startApp([url, keyPrefix, outboxFile, "await", String(total / 2), String(total)])
        yield* young.until("ready")
        yield* old.resume
        yield* old.until("idle")
        // The old process is gone, its last records in the file only.
        yield* stop(old.child, "SIGKILL")
        yield* young.until("idle")
        yield* startRedis
        // The new process writes its own records, and those the old one left.
        yield* exactUsage(url, keyPrefix, total).pipe(
          // Until it holds (an assertion that fails is a defect: made a failure to be retried), 60 s at most.
          Effect.catchAllDefect(Effect.fail),
          Effect.retry(Schedule.spaced("250 millis").pipe(Schedule.intersect(Schedule.recurs(240)))),
          Effect.orDie
        )
      }),
    240_000
  )

  it.scopedLive(
    "an app (runMain) stopped with SIGTERM during an outage: its buffered deliveries drained into the outbox file, replayed by the next start: 0 lost, 0 double",
    () =>
      Effect.gen(function*() {
        // Redis is down from the start: nothing listens on its port until the second process runs.
        const { keyPrefix, outboxFile, startApp, startRedis, url } = yield* outboxRun("sigterm")
        const total = 3_000
        const first = yield* startApp([url, keyPrefix, outboxFile, String(total)], shutdownWorker)
        // Deliveries still in the handler's buffer when the app is told to stop.
        const buffered = Number((yield* lineStarting(first, "made ")).slice("made ".length))
        assert.isAbove(buffered, 0)
        // SIGTERM: runMain interrupts the program, the layers close (the buffer drained, the outbox's
        // last attempt), and the process exits by itself.
        const exited = Effect.async<{ readonly code: number | null; readonly signal: string | null }>((resume) => {
          first.child.once("exit", (code, signal) => resume(Effect.succeed({ code, signal })))
        })
        first.child.kill("SIGTERM")
        const exit = yield* exited.pipe(
          Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new Error("the app did not exit after SIGTERM") })
        )
        assert.strictEqual(exit.signal, null, `killed by ${exit.signal}`)
        // Redis is back; the next start replays the file.
        yield* startRedis
        yield* drained(yield* startApp([url, keyPrefix, outboxFile, "0"], shutdownWorker))
        yield* exactUsage(url, keyPrefix, total)
      }),
    240_000
  )
})
