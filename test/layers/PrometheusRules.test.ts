/**
 * The shipped Prometheus rules and Grafana dashboard (`layers/prometheus`, `layers/grafana`):
 *
 * - `promtool check rules` and `promtool test rules` (the unit tests with input series);
 * - every dashboard query parses (as a recording rule, through `promtool check rules`);
 * - a real Prometheus (Debian's `prometheus`, own config and data dir, free loopback port) scraping an app
 *   that runs instrumented calls with a flaky handler: the documented success-ratio query and its
 *   recording rule return the ratio the app's `health` reports, and every dashboard query evaluates.
 *
 * Needs `promtool` and `prometheus` on PATH: outside CI the suite is skipped with a banner saying so; with
 * `CI` set, a missing binary fails it (`.ci/run` installs Debian's `prometheus`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Schedule, Scope } from "effect"
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as GenAiMetrics from "../../layers/GenAiMetrics.js"
import * as Prometheus from "../../layers/Prometheus.js"
import { Callbacks, Dispatcher, Handler } from "../../src/index.js"
import { freePort } from "../support/globalSetup.js"

const rulesDir = path.resolve(import.meta.dirname, "../../layers/prometheus")
const rules = path.join(rulesDir, "effect-llm-callbacks.rules.yml")
const dashboardFile = path.resolve(import.meta.dirname, "../../layers/grafana/effect-llm-callbacks.dashboard.json")

const onPath = (command: string): boolean => spawnSync("sh", ["-c", `command -v ${command}`]).status === 0
const available = onPath("promtool") && onPath("prometheus")
const ci = process.env["CI"] !== undefined && process.env["CI"] !== ""
if (!available && !ci) {
  console.warn(
    "\n[skipped] test/layers/PrometheusRules.test.ts: promtool and prometheus are not on PATH. " +
      "Install Debian's prometheus package (apt-get install -y prometheus) to run the rule, dashboard and " +
      "real-Prometheus tests; with CI set they fail instead of being skipped.\n"
  )
}

const run = (command: string, args: ReadonlyArray<string>, cwd?: string) =>
  Effect.async<{ readonly code: number; readonly output: string }>((resume) => {
    execFile(command, args, { cwd, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1
      resume(Effect.succeed({ code, output: `${stdout}\n${stderr}` }))
    })
  })

interface Panel {
  readonly title: string
  readonly targets: ReadonlyArray<{ readonly expr: string }>
}

const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8")) as {
  readonly panels: ReadonlyArray<Panel>
}

/** A dashboard query as Prometheus takes it: Grafana's `$__rate_interval` made a fixed window. */
const queryOf = (expr: string): string => expr.replaceAll("$__rate_interval", "1m")

describe.skipIf(!available && !ci)("shipped Prometheus rules and Grafana dashboard", () => {
  it.effect("promtool: the rules check, and their unit tests pass", () =>
    Effect.gen(function*() {
      const check = yield* run("promtool", ["check", "rules", rules])
      assert.strictEqual(check.code, 0, check.output)
      assert.include(check.output, "SUCCESS")
      const test = yield* run("promtool", ["test", "rules", "effect-llm-callbacks.rules.promtool.yml"], rulesDir)
      assert.strictEqual(test.code, 0, test.output)
      assert.include(test.output, "SUCCESS")
    }))

  it.effect("every dashboard query parses (checked by promtool as a recording rule)", () =>
    Effect.gen(function*() {
      const exprs = dashboard.panels.flatMap((panel) => panel.targets.map((target) => queryOf(target.expr)))
      assert.isAtLeast(exprs.length, 12)
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dashboard-rules-"))
      const file = path.join(dir, "dashboard.rules.yml")
      fs.writeFileSync(
        file,
        `groups:\n  - name: dashboard\n    rules:\n${
          exprs.map((expr, i) => `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(expr)}\n`).join("")
        }`
      )
      const check = yield* run("promtool", ["check", "rules", file])
      fs.rmSync(dir, { recursive: true, force: true })
      assert.strictEqual(check.code, 0, check.output)
    }))

  it.scopedLive(
    "a real Prometheus scraping the app: the documented success ratio and its recording rule equal the health's ratio",
    () =>
      Effect.gen(function*() {
        const appPort = yield* Effect.promise(freePort)
        const promPort = yield* Effect.promise(freePort)
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "prometheus-"))),
          (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
        )
        const flaky = `flaky_${process.pid}`
        fs.writeFileSync(
          path.join(dir, "prometheus.yml"),
          [
            "global:",
            "  scrape_interval: 1s",
            "  evaluation_interval: 1s",
            "rule_files:",
            `  - ${JSON.stringify(rules)}`,
            "scrape_configs:",
            "  - job_name: app",
            "    static_configs:",
            `      - targets: ["127.0.0.1:${appPort}"]`
          ].join("\n")
        )
        // Started by us, ended by its PID.
        yield* Effect.acquireRelease(
          Effect.sync(() =>
            spawn("prometheus", [
              `--config.file=${path.join(dir, "prometheus.yml")}`,
              `--storage.tsdb.path=${path.join(dir, "data")}`,
              `--web.listen-address=127.0.0.1:${promPort}`
            ], { stdio: "ignore" })
          ),
          (child: ChildProcess) =>
            Effect.async<void>((resume) => {
              if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
              const kill = setTimeout(() => child.kill("SIGKILL"), 5_000)
              child.once("exit", () => {
                clearTimeout(kill)
                resume(Effect.void)
              })
              child.kill("SIGTERM")
            })
        )
        const query = (expr: string) =>
          Effect.tryPromise(async () => {
            const response = await fetch(
              `http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`
            )
            return (await response.json()) as {
              readonly status: string
              readonly error?: string
              readonly data: { readonly result: ReadonlyArray<{ readonly metric: Record<string, string>; readonly value: [number, string] }> }
            }
          })
        const valueOf = (expr: string) =>
          Effect.map(query(expr), (answer) => {
            const sample = answer.data.result.find((r) => r.metric["callback_type"] === flaky)
            return sample === undefined ? undefined : Number(sample.value[1])
          })
        const eventually = <A>(effect: Effect.Effect<A, unknown>, ok: (a: A) => boolean, what: string) =>
          effect.pipe(
            Effect.flatMap((a) => (ok(a) ? Effect.succeed(a) : Effect.fail("not yet" as const))),
            Effect.retry(Schedule.spaced("250 millis").pipe(Schedule.intersect(Schedule.recurs(160)))),
            Effect.orElse(() => Effect.dieMessage(`Prometheus: ${what} did not happen within 40 s`))
          )

        // The app: a flaky handler failing every 4th call, the GenAI metrics, the endpoint.
        let n = 0
        const scope = yield* Scope.make()
        const app = yield* Layer.buildWithScope(
          Layer.mergeAll(
            Dispatcher.toLayer(Handler.make({
              name: flaky,
              onLlmEnd: () => Effect.suspend(() => (++n % 4 === 0 ? Effect.fail("flaky") : Effect.void)),
              retry: Schedule.stop
            })),
            GenAiMetrics.layer({ name: `gen_ai_${process.pid}` }),
            Prometheus.layer({ port: appPort })
          ).pipe(Layer.provideMerge(Dispatcher.layer())),
          scope
        )
        yield* Effect.addFinalizer(() => Scope.close(scope, Effect.void as never))
        yield* eventually(query(`up{job="app"}`), (a) => a.data.result.some((r) => r.value[1] === "1"), "a first scrape")
        // The handler's series exist at 0 from registration: the window starts at 0.
        yield* eventually(valueOf(`sum by (callback_type) (callback_executions_total)`), (v) => v === 0, "series at 0")

        const call = Effect.succeed({ content: "ok", usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 } })
          .pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini" }))
        yield* Effect.provide(Effect.repeatN(call, 39), app).pipe(Logger.withMinimumLogLevel(LogLevel.None))
        const health = yield* Effect.provide(Dispatcher.health, app)
        const h = health.handlers.find((handler) => handler.name === flaky)!
        const ratio = h.successes / (h.successes + h.failures)
        assert.strictEqual(h.successes + h.failures, 40)
        assert.strictEqual(ratio, 0.75)

        yield* eventually(valueOf(`sum by (callback_type) (callback_executions_total)`), (v) => v === 40, "a scrape after the calls")
        const documented = `sum by (callback_type) (rate(callback_executions_total{status="success"}[5m])) / ` +
          `sum by (callback_type) (rate(callback_executions_total[5m]))`
        assert.closeTo((yield* valueOf(documented))!, ratio, 1e-9)
        // The recording rule, evaluated every second, says the same.
        const recorded = yield* eventually(
          valueOf("callback_type:callback_executions:success_ratio_rate5m"),
          (v) => v !== undefined && Math.abs(v - ratio) < 1e-9,
          "the recording rule's ratio"
        )
        assert.closeTo(recorded!, ratio, 1e-9)
        // The per-series form (status on both sides) is always 1: why the docs aggregate.
        const naive = yield* query(
          `rate(callback_executions_total{callback_type="${flaky}",status="success"}[5m]) / rate(callback_executions_total{callback_type="${flaky}"}[5m])`
        )
        assert.deepStrictEqual(naive.data.result.map((r) => Number(r.value[1])), [1])

        // Every dashboard query evaluates against the real metrics.
        for (const panel of dashboard.panels) {
          for (const target of panel.targets) {
            const answer = yield* query(queryOf(target.expr))
            assert.strictEqual(answer.status, "success", `${panel.title}: ${answer.error ?? ""}`)
          }
        }
        // The tokens panel has data once two scrapes saw the histogram (it exists from the first call on).
        yield* eventually(
          query(queryOf(dashboard.panels.find((p) => p.title.startsWith("Tokens"))!.targets[0]!.expr)),
          (answer) => answer.data.result.length > 0,
          "data in the tokens panel"
        )
      }),
    120_000
  )
})
