/**
 * The keys of the dispatcher's per-handler metrics, and the label sets and
 * metric hooks of each handler, resolved once when it is registered.
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricHook from "effect/MetricHook"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import { type Phase, phases } from "./phases.js"

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
 * Precomputed label sets for one handler. Metric hooks are cached per label
 * array identity, so reusing these arrays keeps an update on the dispatch hot
 * path to a map lookup.
 */
export interface HandlerLabels {
  /**
   * The registry hook of `callback_executions_total` for this handler, a
   * phase and an outcome, resolved once: updating a hook directly skips the
   * per-update lookup of the label set.
   */
  readonly executionHook: (phase: Phase, status: Status) => MetricHook.MetricHook<number, unknown>
  /** The registry hooks of `callback_duration_seconds`, per phase. */
  readonly durationHooks: Readonly<Record<Phase, MetricHook.MetricHook<number, unknown>>>
  readonly duration: Readonly<Record<Phase, ReadonlyArray<MetricLabel.MetricLabel>>>
  readonly error: Readonly<Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>>
  readonly handler: ReadonlyArray<MetricLabel.MetricLabel>
}

/**
 * The label sets and metric hooks of one handler. The series of the
 * outcomes it can have (its phases; `dropped` in background mode only) are
 * created at registration, so that they are exported at 0 before any event;
 * the others are never created.
 */
export const makeHandlerLabels = (
  handler: string,
  hooked: ReadonlyArray<Phase>,
  background: boolean
): HandlerLabels => {
  const type = MetricLabel.make("callback_type", handler)
  const duration = {} as Record<Phase, ReadonlyArray<MetricLabel.MetricLabel>>
  const durationHooks = {} as Record<Phase, MetricHook.MetricHook<number, unknown>>
  const executionHooks = {} as Record<Phase, Partial<Record<Status, MetricHook.MetricHook<number, unknown>>>>
  for (const phase of phases) {
    duration[phase] = [type, MetricLabel.make("phase", phase)]
    durationHooks[phase] = Metric.globalMetricRegistry.get(MetricKey.taggedWithLabels(durationKey, duration[phase]))
    executionHooks[phase] = {}
  }
  const executionHook = (phase: Phase, status: Status) =>
    executionHooks[phase][status] ??= Metric.globalMetricRegistry.get(
      MetricKey.taggedWithLabels(executionsKey, [...duration[phase], MetricLabel.make("status", status)])
    )
  for (const phase of hooked) {
    for (const status of statuses) {
      if (status !== "dropped" || background) executionHook(phase, status)
    }
  }
  const error = {} as Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>
  for (const status of statuses) {
    if (status !== "success") error[status] = [type, MetricLabel.make("error_type", status)]
  }
  return { executionHook, durationHooks, duration, error, handler: [type] }
}
