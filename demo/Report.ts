/**
 * What the demo prints after its run, and the check that no call failed because of a handler.
 *
 * @since 0.1.0
 */
import * as AiError from "@effect/ai/AiError"
import * as Cause from "effect/Cause"
import * as Exit from "effect/Exit"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import { formatCost } from "../cli/Cli.js"
import type * as Dispatcher from "../src/Dispatcher.js"
import type * as TokenStore from "../src/TokenStore.js"
import type { LedgerState } from "./Handlers.js"
import type { PlannedCall, ServerTally } from "./Workload.js"

// =============================================================================
// Tables
// =============================================================================

/**
 * A plain-text table: the first column left aligned, the others right aligned, two spaces apart.
 *
 * @since 0.1.0
 * @category formatting
 */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] ?? "").length)))
  const render = (row: ReadonlyArray<string>) =>
    row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ").trimEnd()
  return [render(header), ...rows.map(render)].map((line) => `  ${line}`).join("\n")
}

const int = (n: number): string => n.toLocaleString("en-US")

/**
 * A user's usage as read back from the token store.
 *
 * @since 0.1.0
 * @category models
 */
export interface UsageRow {
  readonly user: string
  readonly stats: TokenStore.UsageStats
}

/**
 * The per-user usage table (prompt, completion, total, cost) with a total line.
 *
 * @since 0.1.0
 * @category formatting
 */
export const usageTable = (rows: ReadonlyArray<UsageRow>, ledger: LedgerState): string => {
  const sum = { calls: 0, prompt: 0, cached: 0, completion: 0, reasoning: 0, total: 0, estimated: 0, cost: 0 }
  const lines = rows.map(({ stats, user }) => {
    const calls = ledger.users[user]?.calls ?? 0
    sum.calls += calls
    sum.prompt += stats.promptTokens
    sum.cached += stats.cachedTokens
    sum.completion += stats.completionTokens
    sum.reasoning += stats.reasoningTokens
    sum.total += stats.totalTokens
    sum.estimated += stats.estimatedTokens
    sum.cost += stats.costMicros
    return [
      user,
      String(calls),
      int(stats.promptTokens),
      int(stats.cachedTokens),
      int(stats.completionTokens),
      int(stats.reasoningTokens),
      int(stats.totalTokens),
      int(stats.estimatedTokens),
      formatCost(stats.costMicros)
    ]
  })
  return table(
    ["user", "calls", "prompt", "cached", "completion", "reasoning", "total", "estimated", "cost (USD)"],
    [
      ...lines,
      [
        "all users",
        String(sum.calls),
        int(sum.prompt),
        int(sum.cached),
        int(sum.completion),
        int(sum.reasoning),
        int(sum.total),
        int(sum.estimated),
        formatCost(sum.cost)
      ]
    ]
  )
}

/**
 * What the handlers heard besides starts and ends: tool runs (and their parents), stream chunks by kind.
 *
 * @since 0.3.0
 * @category formatting
 */
export const lifecycleSummary = (ledger: LedgerState, calls: ReadonlyArray<PlannedCall>): string => {
  const planned = calls.filter((call) => call.reply._tag === "Text" && call.reply.toolCalls.length > 0).length
  return [
    `  cached input tokens are part of prompt, reasoning tokens part of completion; estimated: counted with a tokenizer`,
    `  tool runs heard: ${ledger.toolRuns} (the model asked for ${planned}), each a child of the model call that asked: ` +
      `${ledger.toolRunsWithParent}/${ledger.toolRuns}`,
    `  stream chunks heard: ${int(ledger.chunks.text)} text, ${int(ledger.chunks.reasoning)} reasoning`
  ].join("\n")
}

/**
 * The health report, one line per handler.
 *
 * @since 0.1.0
 * @category formatting
 */
export const healthTable = (report: Dispatcher.HealthReport): string =>
  [
    `  dispatcher: ${report.status}, ${report.inFlight} in flight, ${report.pending} pending`,
    table(
      ["handler", "mode", "successes", "failures", "timeouts", "defects", "retries", "dropped", "pending"],
      report.handlers.map((h) => [
        h.name,
        h.mode,
        String(h.successes),
        String(h.failures),
        String(h.timeouts),
        String(h.defects),
        String(h.retries),
        String(h.dropped),
        String(h.pending)
      ])
    ),
    ...report.handlers.flatMap((h) =>
      Option.match(h.lastError, {
        onNone: () => [],
        onSome: (e) => [`  last error of ${h.name}: ${e.reason} on ${e.phase}: ${e.message}`]
      })
    )
  ].join("\n")

// =============================================================================
// Metrics
// =============================================================================

const tagOf = (pair: MetricPair.MetricPair.Untyped, key: string): string | undefined =>
  pair.metricKey.tags.find((tag) => tag.key === key)?.value

const counterValue = (pair: MetricPair.MetricPair.Untyped): number => {
  const state = pair.metricState
  return MetricState.isCounterState(state) ? Number(state.count) : 0
}

/**
 * A histogram's cumulative buckets (upper bound, count of values at or below it), possibly summed over
 * several label sets with the same boundaries.
 *
 * @since 0.1.0
 * @category metrics
 */
export interface Buckets {
  readonly count: number
  readonly cumulative: ReadonlyArray<readonly [number, number]>
}

const addHistogram = (into: Buckets | undefined, pair: MetricPair.MetricPair.Untyped): Buckets => {
  const state = pair.metricState
  const acc = into ?? { count: 0, cumulative: [] }
  if (!MetricState.isHistogramState(state)) return acc
  const buckets = Array.from(state.buckets)
  return {
    count: acc.count + state.count,
    cumulative: buckets.map(([bound, n], i) => [bound, n + (acc.cumulative[i]?.[1] ?? 0)] as const)
  }
}

/**
 * The upper bound of the histogram bucket holding the `q` quantile, `undefined` when it is past the last
 * bound (or the histogram is empty).
 *
 * @since 0.1.0
 * @category metrics
 */
export const quantileBound = (buckets: Buckets | undefined, q: number): number | undefined => {
  if (buckets === undefined || buckets.count === 0) return undefined
  const rank = q * buckets.count
  return buckets.cumulative.find(([, n]) => n >= rank)?.[0]
}

const seconds = (bound: number | undefined, lastBound: string): string =>
  bound === undefined ? lastBound : bound < 1 ? `<= ${Math.round(bound * 1000)} ms` : `<= ${bound} s`

/**
 * The callback metrics (`callback_executions_total` by handler and status, `callback_retries_total`, the
 * p95 of `callback_duration_seconds`) and the GenAI client metrics per model, from a metric snapshot.
 *
 * @since 0.1.0
 * @category formatting
 */
export const metricsSummary = (
  snapshot: ReadonlyArray<MetricPair.MetricPair.Untyped>,
  handlers: ReadonlyArray<string>
): string => {
  const executions = new Map<string, Record<string, number>>()
  const retries = new Map<string, number>()
  const durations = new Map<string, Buckets>()
  const models = new Map<string, { calls: number; errors: number; input: number; output: number; duration?: Buckets }>()
  const modelOf = (name: string) => {
    let entry = models.get(name)
    if (entry === undefined) models.set(name, entry = { calls: 0, errors: 0, input: 0, output: 0 })
    return entry
  }
  for (const pair of snapshot) {
    const name = pair.metricKey.name
    const handler = tagOf(pair, "callback_type")
    if (name === "callback_executions_total" && handler !== undefined) {
      const status = tagOf(pair, "status") ?? "unknown"
      const counts = executions.get(handler) ?? {}
      counts[status] = (counts[status] ?? 0) + counterValue(pair)
      executions.set(handler, counts)
    } else if (name === "callback_retries_total" && handler !== undefined) {
      retries.set(handler, (retries.get(handler) ?? 0) + counterValue(pair))
    } else if (name === "callback_duration_seconds" && handler !== undefined) {
      durations.set(handler, addHistogram(durations.get(handler), pair))
    } else if (name === "gen_ai.client.operation.duration") {
      const state = pair.metricState
      const entry = modelOf(tagOf(pair, "gen_ai.request.model") ?? "unknown")
      const calls = MetricState.isHistogramState(state) ? state.count : 0
      entry.calls += calls
      if (tagOf(pair, "error.type") !== undefined) entry.errors += calls
      entry.duration = addHistogram(entry.duration, pair)
    } else if (name === "gen_ai.client.token.usage") {
      const state = pair.metricState
      const entry = modelOf(tagOf(pair, "gen_ai.request.model") ?? "unknown")
      const sum = MetricState.isHistogramState(state) ? state.sum : 0
      if (tagOf(pair, "gen_ai.token.type") === "input") entry.input += sum
      else entry.output += sum
    }
  }
  const statuses = ["success", "failed", "timeout", "defect", "interrupted", "dropped"]
  const callbackRows = handlers.map((handler) => {
    const counts = executions.get(handler) ?? {}
    return [
      handler,
      ...statuses.map((status) => String(counts[status] ?? 0)),
      String(retries.get(handler) ?? 0),
      seconds(quantileBound(durations.get(handler), 0.95), "> 30 s")
    ]
  })
  const modelRows = Array.from(models.entries()).sort(([a], [b]) => a.localeCompare(b)).map((
    [model, entry]
  ) => [
    model,
    String(entry.calls),
    String(entry.errors),
    int(entry.input),
    int(entry.output),
    seconds(quantileBound(entry.duration, 0.95), "> 81.92 s")
  ])
  return [
    "  callback_executions_total by handler and status, callback_retries_total, callback_duration_seconds p95:",
    table(["handler", ...statuses, "retries", "p95"], callbackRows),
    "",
    "  gen_ai.client.operation.duration and gen_ai.client.token.usage by model:",
    table(["model", "calls", "errors", "input tokens", "output tokens", "p95 duration"], modelRows)
  ].join("\n")
}

/**
 * What a scrape of the Prometheus endpoint returned: a few facts that show it serves the metrics.
 *
 * @since 0.1.0
 * @category formatting
 */
export const scrapeSummary = (url: string, body: string): string => {
  const lines = body.split("\n").filter((line) => line.length > 0 && !line.startsWith("#"))
  const series = (prefix: string) => lines.filter((line) => line.startsWith(prefix)).length
  return `  scraped ${url}: ${lines.length} samples, ${series("callback_executions_total")} of ` +
    `callback_executions_total, ${series("gen_ai_client_token_usage")} of gen_ai_client_token_usage`
}

// =============================================================================
// Proof
// =============================================================================

/**
 * The result of one call: the text it returned, or how it failed.
 *
 * @since 0.1.0
 * @category models
 */
export interface Outcome {
  readonly call: PlannedCall
  readonly exit: Exit.Exit<string, AiError.AiError>
}

/**
 * Everything the check compares.
 *
 * @since 0.1.0
 * @category models
 */
export interface Evidence {
  readonly outcomes: ReadonlyArray<Outcome>
  readonly server: ServerTally
  readonly ledger: LedgerState
  readonly store: ReadonlyArray<UsageRow>
}

/**
 * The check's lines and whether it holds.
 *
 * @since 0.1.0
 * @category models
 */
export interface Verdict {
  readonly holds: boolean
  /** Calls whose result differs from what the provider answered. */
  readonly deviations: number
  readonly lines: ReadonlyArray<string>
}

const statusOf = (error: AiError.AiError): number | undefined =>
  error._tag === "HttpResponseError" ? error.response.status : undefined

/** Why a call's result is not the provider's answer, or `undefined` when it is. */
const deviation = ({ call, exit }: Outcome): string | undefined => {
  const reply = call.reply
  if (Exit.isSuccess(exit)) {
    if (reply._tag === "HttpError") return `call ${call.index} succeeded although the server sent ${reply.status}`
    return exit.value === reply.text ? undefined : `call ${call.index} returned a text the server did not send`
  }
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) {
    return `call ${call.index} did not fail with the provider's error: ${Cause.pretty(exit.cause).split("\n")[0]}`
  }
  const error = failure.value
  if (!AiError.isAiError(error)) return `call ${call.index} failed with a non-AiError: ${String(error)}`
  if (reply._tag === "Text") return `call ${call.index} failed (${error._tag}) although the server sent a text`
  const status = statusOf(error)
  return status === reply.status
    ? undefined
    : `call ${call.index} failed with ${error._tag} ${status ?? ""} although the server sent ${reply.status}`
}

/**
 * Checks that every call returned exactly what the provider answered (its text, or an `AiError` with the
 * status the server sent), that the server sent as many errors as calls failed, and that the token store
 * holds, per user, what the ended calls reported plus what was estimated for calls without usage.
 *
 * @since 0.1.0
 * @category proof
 */
export const verify = (evidence: Evidence): Verdict => {
  const { ledger, outcomes, server, store } = evidence
  const lines: Array<string> = []
  const problems: Array<string> = []
  const judged = outcomes.map((o) => ({ failed: Exit.isFailure(o.exit), why: deviation(o) }))
  const failed = judged.filter((j) => j.failed)
  const succeeded = judged.filter((j) => !j.failed)
  const deviations = judged.flatMap((j) => (j.why === undefined ? [] : [j.why]))
  const byStatus = Object.entries(server.errorsByStatus).sort().map(([status, n]) => `${status}: ${n}`).join(", ")
  lines.push(`  calls: ${outcomes.length}, ${succeeded.length} succeeded, ${failed.length} failed`)
  lines.push(
    `  provider errors the mock server sent: ${server.errors}${byStatus === "" ? "" : ` (${byStatus})`}, ` +
      `in ${server.requests} requests`
  )
  if (server.errors !== failed.length) {
    problems.push(`${failed.length} calls failed but the server sent ${server.errors} errors`)
  }
  if (server.requests !== outcomes.length || server.unknown > 0) {
    problems.push(`the server got ${server.requests} requests (${server.unknown} unknown) for ${outcomes.length} calls`)
  }
  lines.push(
    `  failed calls whose error is the provider's (an AiError with the status the server sent): ` +
      `${failed.filter((j) => j.why === undefined).length}/${failed.length}`
  )
  lines.push(
    `  succeeded calls that returned exactly the text the server sent: ` +
      `${succeeded.filter((j) => j.why === undefined).length}/${succeeded.length}`
  )
  problems.push(...deviations)

  const storeTotal = store.reduce((sum, row) => sum + row.stats.totalTokens, 0)
  lines.push(
    `  tokens the server reported: ${int(server.reportedTokens)}; in End events: ${int(ledger.reportedTokens)}`
  )
  if (server.reportedTokens !== ledger.reportedTokens) {
    problems.push(`the End events carry ${ledger.reportedTokens} tokens, the server reported ${server.reportedTokens}`)
  }
  lines.push(
    `  tokens estimated for ${ledger.estimatedCalls} responses without usage: ${int(ledger.estimatedTokens)}`
  )
  lines.push(
    `  token store total: ${int(storeTotal)} (reported + estimated = ` +
      `${int(ledger.reportedTokens + ledger.estimatedTokens)})`
  )
  if (storeTotal !== ledger.reportedTokens + ledger.estimatedTokens) {
    problems.push(`the token store holds ${storeTotal} tokens, the calls used ${
      ledger.reportedTokens + ledger.estimatedTokens
    }`)
  }
  const users = new Set([...store.map((row) => row.user), ...Object.keys(ledger.users)])
  let matching = 0
  for (const user of users) {
    const stats = store.find((row) => row.user === user)?.stats
    const seen = ledger.users[user]
    if (
      stats !== undefined && seen !== undefined && stats.promptTokens === seen.promptTokens &&
      stats.completionTokens === seen.completionTokens && stats.totalTokens === seen.totalTokens &&
      stats.costMicros === seen.costMicros
    ) {
      matching++
    } else {
      problems.push(
        `${user}: the store holds ${
          stats === undefined ? "nothing" : `${stats.promptTokens}/${stats.completionTokens}/${stats.totalTokens}`
        }, the End events add up to ${
          seen === undefined ? "nothing" : `${seen.promptTokens}/${seen.completionTokens}/${seen.totalTokens}`
        }`
      )
    }
  }
  lines.push(`  users whose stored tokens and cost equal the sum of their End events: ${matching}/${users.size}`)
  const holds = problems.length === 0
  if (holds) {
    lines.push("  calls failed because of a handler: 0")
  } else {
    lines.push(`  calls whose result differs from the provider's answer: ${deviations.length}`)
    lines.push("  DISCREPANCY:")
    lines.push(...problems.slice(0, 20).map((problem) => `    ${problem}`))
    if (problems.length > 20) lines.push(`    ... and ${problems.length - 20} more`)
  }
  return { holds, deviations: deviations.length, lines }
}
