/**
 * The keys of the dispatcher's per-handler metrics, and the label sets and
 * metric hooks of each handler, resolved once when it is registered.
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricHook from "effect/MetricHook"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import { phases } from "./phases.js"

/** Outcome of one handler invocation, the `status` label. */
export type Status = "success" | "failed" | "defect" | "timeout" | "interrupted" | "dropped"

const statuses: ReadonlyArray<Status> = ["success", "failed", "defect", "timeout", "interrupted", "dropped"]

export const activeKey = MetricKey.gauge("active_callbacks", { description: "Callback handler invocations in flight" })

/** The registry hook of `active_callbacks` (it has no labels), resolved once: an update is a call. */
export const activeHook: MetricHook.MetricHook<number, unknown> = Metric.globalMetricRegistry.get(activeKey)

export const executionsKey = MetricKey.counter("callback_executions_total", {
  description: "Callback handler invocations by handler, phase and outcome",
  incremental: true
})

/**
 * Prometheus' default buckets, in seconds.
 */
export const durationBoundaries = MetricBoundaries.fromIterable([
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30
])


export const durationKey = MetricKey.histogram(
  "callback_duration_seconds",
  durationBoundaries,
  "Callback handler invocation duration in seconds, retries included"
)


/**
 * The registry hooks of one handler's invocations in one phase, resolved
 * once: updating a hook directly skips the per-update lookup of its label
 * set, and an outcome's accounting reads one object per invocation. The
 * series of an outcome is made the first time it is asked for.
 */
export class PhaseMeter {
  /** `callback_duration_seconds`. */
  readonly duration: MetricHook.MetricHook<number, unknown>
  private successHook: MetricHook.MetricHook<number, unknown> | undefined = undefined
  private readonly executions: Partial<Record<Status, MetricHook.MetricHook<number, unknown>>> = {}

  /** `labels`: the handler's and the phase's, of `callback_duration_seconds` and `callback_retries_total`. */
  constructor(readonly labels: ReadonlyArray<MetricLabel.MetricLabel>) {
    this.duration = Metric.globalMetricRegistry.get(MetricKey.taggedWithLabels(durationKey, labels))
  }

  /** `callback_executions_total` with `status="success"`, the commonest. */
  success(): MetricHook.MetricHook<number, unknown> {
    return this.successHook ??= this.execution("success")
  }

  /** `callback_executions_total` for an outcome. */
  execution(status: Status): MetricHook.MetricHook<number, unknown> {
    return this.executions[status] ??= Metric.globalMetricRegistry.get(
      MetricKey.taggedWithLabels(executionsKey, [...this.labels, MetricLabel.make("status", status)])
    )
  }
}

/**
 * The metrics of one handler: its meters (registry hooks resolved once), and
 * the label sets of the metrics updated by labels (errors, drops, queue
 * depth), made once so that an update reuses them.
 */
export interface HandlerLabels {
  /** Per phase, its metric hooks, by phase index (see `PhaseIndex`). */
  readonly meters: ReadonlyArray<PhaseMeter>
  readonly error: Readonly<Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>>
  readonly handler: ReadonlyArray<MetricLabel.MetricLabel>
}

/**
 * The label sets and metric hooks of one handler, whose `hooks` are by
 * phase index. The series of the outcomes it can have (the phases it has a
 * hook for; `dropped` in background mode only) are created at registration,
 * so that they are exported at 0 before any event; the others are made on
 * first use.
 */
export const makeHandlerLabels = (
  handler: string,
  hooks: ReadonlyArray<unknown>,
  background: boolean
): HandlerLabels => {
  const type = MetricLabel.make("callback_type", handler)
  const meters = phases.map((phase) => new PhaseMeter([type, MetricLabel.make("phase", phase)]))
  meters.forEach((meter, index) => {
    if (hooks[index] === undefined) return
    for (const status of statuses) {
      if (status !== "dropped" || background) meter.execution(status)
    }
  })
  const error = {} as Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>
  for (const status of statuses) {
    if (status !== "success") error[status] = [type, MetricLabel.make("error_type", status)]
  }
  return { meters, error, handler: [type] }
}
