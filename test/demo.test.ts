// `npm run demo` (demo/main.ts) run as a child process through tsx, the way a user runs it, not on a
// terminal: the memory path, the Redis path, the metrics port fallback and bad flags. The proof's
// check itself is tested on fabricated evidence, since a correct library never makes it fail.
import { assert, describe, it } from "@effect/vitest"
import * as AiError from "@effect/ai/AiError"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { execFile } from "node:child_process"
import * as net from "node:net"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import * as Report from "../demo/Report.js"
import * as Workload from "../demo/Workload.js"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as BillingCycle from "../src/BillingCycle.js"
import { bannerWithoutRedis, freePort, redisUrl, skipWithoutRedis } from "./support/redis.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const tsx = path.join(root, "node_modules", "tsx", "dist", "cli.mjs")

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

// eslint-disable-next-line no-control-regex
const ansi = /\u001b\[[0-9;]*m/g

const demo = (args: ReadonlyArray<string>): Effect.Effect<Result> =>
  Effect.async<Result>((resume) => {
    const env = { ...process.env }
    delete env["REDIS_URL"]
    const child = execFile(
      process.execPath,
      [tsx, "demo/main.ts", ...args],
      { cwd: root, env, timeout: 50_000, encoding: "utf8" },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resume(Effect.succeed({ code, stdout: stdout.replace(ansi, ""), stderr: stderr.replace(ansi, "") }))
      }
    )
    return Effect.sync(() => child.kill())
  })

const describeResult = (result: Result) => `exit ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`

/** The cells of the table line starting with `first` (after the indentation). */
const row = (output: string, first: string): ReadonlyArray<string> | undefined =>
  output.split("\n").map((line) => line.trim().split(/\s{2,}/)).find((cells) => cells[0] === first)

const count = (cell: string | undefined): number => Number((cell ?? "NaN").replace(/,/g, ""))

/** Checks what every successful run prints; returns the "all users" total of the usage table. */
const assertReport = (result: Result, users: number): number => {
  const out = result.stdout
  assert.strictEqual(result.code, 0, describeResult(result))
  // Not a terminal: plain progress lines, no bar redrawn with \r.
  assert.include(out, "progress 40/40 (100%)")
  assert.notInclude(out, "\r")
  // The usage table, one line per user, read back from the store.
  assert.match(
    out,
    /^\s*user\s+calls\s+prompt\s+cached\s+completion\s+reasoning\s+total\s+estimated\s+cost \(USD\)$/m
  )
  for (let n = 0; n < users; n++) assert.isDefined(row(out, Workload.userId(n, users)), `row of user ${n + 1}`)
  const all = row(out, "all users")
  assert.isDefined(all)
  const succeeded = /calls: 40, (\d+) succeeded, (\d+) failed/.exec(out)
  assert.isNotNull(succeeded, describeResult(result))
  assert.strictEqual(count(all![1]), count(succeeded![1]), "the table counts every call that ended")
  // Health: the flaky handler failed, timed out and was retried; the others did not fail.
  assert.match(out, /^\s*handler\s+mode\s+successes\s+failures\s+timeouts\s+defects\s+retries\s+dropped\s+pending$/m)
  const flaky = row(out, "flaky")
  assert.isDefined(flaky, describeResult(result))
  const [, mode, , failures, timeouts, , retries, dropped] = flaky!
  assert.strictEqual(mode, "await")
  assert.isAbove(count(failures), 0)
  assert.isAbove(count(timeouts), 0)
  assert.isAbove(count(retries), 0)
  assert.strictEqual(count(dropped), 0)
  const audit = row(out, "audit-log")
  assert.deepStrictEqual(audit?.slice(1, 4), ["background", "80", "0"], "the slow handler heard every event")
  assert.strictEqual(row(out, "token-usage-detailed")?.[3], "0")
  // Metrics: the callback metrics summary and a scrape of the Prometheus endpoint.
  assert.match(out, /callback_executions_total by handler and status/)
  assert.match(out, /scraped http:\/\/127\.0\.0\.1:\d+\/metrics: \d+ samples, [1-9]\d* of callback_executions_total/)
  // The proof.
  assert.match(out, /users whose stored tokens and cost equal the sum of their End events: (\d+)\/\1/)
  assert.include(out, "calls failed because of a handler: 0")
  assert.notInclude(out, "DISCREPANCY")
  // Tool runs and stream chunks: every tool run the model asked for, a child of its model call.
  const tools = /tool runs heard: (\d+) \(the model asked for (\d+)\), each a child of the model call that asked: (\d+)\/(\d+)/
    .exec(out)
  assert.isNotNull(tools, describeResult(result))
  assert.strictEqual(tools![1], tools![2])
  assert.strictEqual(tools![3], tools![4])
  assert.match(out, /stream chunks heard: [1-9][\d,]* text, [\d,]+ reasoning/)
  return count(all![6])
}

bannerWithoutRedis("test/demo.test.ts (the demo on Redis)")

describe("npm run demo", () => {
  it.live("runs the workload on the in-memory store and proves no call failed because of a handler", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const result = yield* demo(["--calls", "40", "--users", "5", "--metrics-port", String(port)])
      assertReport(result, 5)
      assert.include(result.stdout, "token store          in memory")
      assert.include(result.stdout, `prometheus           http://127.0.0.1:${port}/metrics`)
    }))

  it.live.skipIf(skipWithoutRedis)("keeps the usage in Redis under a key prefix of its own, and falls back to a free metrics port", () =>
    Effect.gen(function*() {
      // Another process holds the metrics port: the demo must serve on another one, not fail.
      const busy = yield* Effect.acquireRelease(
        Effect.async<net.Server>((resume) => {
          const server = net.createServer()
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
      )
      const address = busy.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const result = yield* demo(["--calls", "40", "--users", "5", "--redis", redisUrl(), "--metrics-port", String(port)])
      const total = assertReport(result, 5)
      assert.include(result.stdout, `port ${port} is taken: serving the metrics on port`)
      const prefix = /key prefix (demo:\d+)/.exec(result.stdout)?.[1]
      assert.isDefined(prefix, describeResult(result))
      // What the table shows is what Redis holds under the run's prefix.
      const cycle = yield* BillingCycle.current()
      const stored = yield* Effect.gen(function*() {
        const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix: prefix! })
        const users = yield* store.users(cycle)
        const stats = yield* Effect.forEach(users, (user) => store.stats(user, cycle))
        return { users, total: stats.reduce((sum, s) => sum + s.totalTokens, 0) }
      }).pipe(Effect.orDie)
      assert.deepStrictEqual(stored.users, ["user-01", "user-02", "user-03", "user-04", "user-05"])
      assert.strictEqual(stored.total, total)
    }).pipe(Effect.scoped))

  it.live("rejects bad flags with the usage and a non-zero exit", () =>
    Effect.gen(function*() {
      const [notANumber, unknown, outOfRange, badRedis] = yield* Effect.all([
        demo(["--calls", "abc"]),
        demo(["--bogus"]),
        demo(["--concurrency", "0"]),
        demo(["--redis", "http://127.0.0.1:6379"])
      ], { concurrency: "unbounded" })
      for (const result of [notANumber, unknown, outOfRange, badRedis]) {
        assert.strictEqual(result.code, 2, describeResult(result))
        assert.include(result.stderr, "USAGE", describeResult(result))
        assert.include(result.stderr, "--calls N", describeResult(result))
        assert.notInclude(result.stdout, "Running", "no workload ran")
      }
      assert.include(unknown.stderr, "--bogus")
      assert.include(outOfRange.stderr, "--concurrency: expected an integer from 1 to 1024, got 0")
      assert.include(badRedis.stderr, "--redis: expected a redis:// or rediss:// URL")
    }))

  it.live("prints its help with --help", () =>
    Effect.gen(function*() {
      const result = yield* demo(["--help"])
      assert.strictEqual(result.code, 0, describeResult(result))
      for (const flag of ["--calls N", "--users N", "--concurrency N", "--redis URL", "--keep-metrics", "--metrics-port"]) {
        assert.include(result.stdout, flag)
      }
    }))
})

describe("the demo's proof", () => {
  const calls = Workload.plan({ calls: 60, users: 4, seed: 7 })
  const text = calls.find((call) => call.reply._tag === "Text")!
  const error = calls.find((call) => call.reply._tag === "HttpError")!
  const answered = (call: Workload.PlannedCall): Report.Outcome => ({
    call,
    exit: call.reply._tag === "Text"
      ? Exit.succeed(call.reply.text)
      : Exit.fail(
        new AiError.HttpResponseError({
          module: "OpenAiClient",
          method: "createResponse",
          reason: "StatusCode",
          request: { method: "POST", url: "http://127.0.0.1/v1/responses", urlParams: [], hash: Option.none(), headers: {} },
          response: { status: call.reply.status, headers: {} }
        })
      )
  })
  const evidence = (outcomes: ReadonlyArray<Report.Outcome>): Report.Evidence => ({
    outcomes,
    server: {
      ...Workload.emptyTally,
      requests: outcomes.length,
      errors: outcomes.filter((o) => o.call.reply._tag === "HttpError").length
    },
    ledger: {
      users: {},
      reportedTokens: 0,
      estimatedTokens: 0,
      estimatedCalls: 0,
      toolRuns: 0,
      toolRunsWithParent: 0,
      chunks: { text: 0, reasoning: 0 }
    },
    store: []
  })

  it("holds when every call returned what the server sent", () => {
    const verdict = Report.verify(evidence([answered(text), answered(error)]))
    assert.isTrue(verdict.holds, verdict.lines.join("\n"))
    assert.include(verdict.lines, "  calls failed because of a handler: 0")
  })

  it("does not hold when a call the server answered failed anyway (a defect, a handler's error)", () => {
    const broken: Report.Outcome = { call: text, exit: Exit.die(new Error("handler blew up")) }
    const verdict = Report.verify(evidence([broken, answered(error)]))
    assert.isFalse(verdict.holds)
    assert.strictEqual(verdict.deviations, 1)
    assert.notInclude(verdict.lines, "  calls failed because of a handler: 0")
    assert.isTrue(verdict.lines.some((line) => line.includes(`call ${text.index} did not fail with the provider's error`)))
  })

  it("does not hold when a call returned another text, or the store lost tokens", () => {
    const altered: Report.Outcome = { call: text, exit: Exit.succeed("something else") }
    assert.isFalse(Report.verify(evidence([altered])).holds)
    const base = evidence([answered(text)])
    const lost = { ...base, ledger: { ...base.ledger, reportedTokens: 10 } }
    assert.isFalse(Report.verify(lost).holds)
  })

  it("plans the same calls for the same seed, with ~8% provider errors", () => {
    const again = Workload.plan({ calls: 60, users: 4, seed: 7 })
    assert.deepStrictEqual(again, calls)
    const many = Workload.plan({ calls: 5000, users: 20, seed: 1 })
    const errors = many.filter((call) => call.reply._tag === "HttpError").length / many.length
    assert.isAbove(errors, 0.06)
    assert.isBelow(errors, 0.1)
    assert.strictEqual(new Set(many.slice(0, 20).map((call) => call.userId)).size, 20, "every user calls")
  })
})
