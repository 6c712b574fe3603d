/**
 * The registered handlers as the dispatcher holds them (entries), the plan
 * of each phase (who hears it, in which priority group), and the state the
 * parts of the dispatcher share.
 */
import type * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
import type * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type * as Schedule from "effect/Schedule"
import type * as Tracer from "effect/Tracer"
import type * as CallbackConfig from "../../CallbackConfig.js"
import type * as Metrics from "../../CallbackMetrics.js"
import type { CallbackEvent } from "../../Events.js"
import type { Mode } from "../../Handler.js"
import type { HandlerLabels } from "../metricLabels.js"
import { type PhaseIndex, phases } from "../phases.js"
import type { Buffer } from "./buffer.js"
import type { Deadlines } from "./deadlines.js"
import type { Microtasks } from "./hookFiber.js"
import type { HookRefs, InheritedRefs } from "./caller.js"
import type { CallToken, LastError } from "./contract.js"
import type { Slots } from "./slots.js"

/** A hook as the dispatcher runs it: one event, or a run of end events (`onLlmEndBatch`). */
export type Hook = (event: any) => Effect.Effect<void, unknown, never>

/**
 * Per-handler counters. They are plain mutable fields on purpose: they are
 * updated on the dispatch hot path, where an Effect `Ref` would cost a fiber
 * operation per invocation. Only the dispatcher writes them.
 */
export interface Stats {
  successes: number
  failures: number
  defects: number
  timeouts: number
  interruptions: number
  retries: number
  dropped: number
  inFlight: number
  pending: number
  lastError: LastError | undefined
  lastOutcome: Metrics.Status | undefined
  /** Background deliveries never run at shutdown (also counted in `dropped`). */
  undelivered: number
  /** Background deliveries interrupted in progress at shutdown (also counted in `interruptions`). */
  interruptedAtShutdown: number
  /** The handler's buffers are being drained (it is being unregistered or the dispatcher closes). */
  closing: boolean
  /** Invocations given up on (timed out, cancelled) whose hook ignores interruption and still runs. */
  overrunning: number
}

export const makeStats = (): Stats => ({
  successes: 0,
  failures: 0,
  defects: 0,
  timeouts: 0,
  interruptions: 0,
  retries: 0,
  dropped: 0,
  inFlight: 0,
  pending: 0,
  lastError: undefined,
  lastOutcome: undefined,
  undelivered: 0,
  interruptedAtShutdown: 0,
  closing: false,
  overrunning: 0
})

/** What a background buffer holds: an event, or a flush marker. */
export type Delivery =
  | {
    readonly _tag: "Event"
    readonly event: CallbackEvent
    /** Its phase's index (see `PhaseIndex`). */
    readonly index: PhaseIndex
    readonly span: Tracer.AnySpan | undefined
  }
  | { readonly _tag: "Flush"; readonly done: Deferred.Deferred<void> }

/**
 * A background buffer and the producers waiting for room in it (FIFO). A
 * waiting producer costs a callback and a timer: no fiber per waiter.
 */
export interface Lane {
  readonly buffer: Buffer<Delivery>
  readonly waiters: Array<Waiter>
}

export interface Waiter {
  readonly delivery: Delivery
  /** False once it gave up (timeout, interruption). */
  readonly waiting: () => boolean
  /** Called once its delivery is in the buffer. */
  readonly admitted: () => void
  /** Lets the producer go without delivering (the drain counted it as not delivered). */
  readonly abandon: () => void
}

/** A registered handler. */
export interface Entry {
  readonly name: string
  /** Its hook of each phase, by phase index (see `PhaseIndex`). */
  readonly hooks: ReadonlyArray<Hook | undefined>
  /** Background mode: takes runs of consecutive end events at once (`onLlmEndBatch`). */
  readonly endBatch: Hook | undefined
  readonly context: Context.Context<never>
  /** Its context holds a parent span: its hooks' defects carry it, so they run on fibers (see `begin`). */
  readonly spanInContext: boolean
  readonly timeout: Duration.Duration
  /** Its pending invocations' timeouts on the live clock; `undefined` when the timeout is infinite. */
  readonly deadlines: Deadlines | undefined
  readonly schedule: Schedule.Schedule<unknown, unknown> | undefined
  readonly mode: Mode
  readonly priority: number
  readonly labels: HandlerLabels
  readonly stats: Stats
  /** Background mode: one buffer per lane; a call's deliveries always take the same lane. */
  readonly lanes: ReadonlyArray<Lane> | undefined
  /** The most deliveries it holds waiting: its background buffers, or its stream chunks queued per call. */
  readonly bufferSize: number
  /** The refs its hook fibers start from, kept between dispatches. */
  readonly hookRefs: HookRefs
}

/** Who hears one phase. */
export interface PhasePlan {
  /** Await-mode handlers with this hook, grouped by priority, highest first. */
  readonly groups: ReadonlyArray<ReadonlyArray<Entry>>
  readonly background: ReadonlyArray<Entry>
  readonly empty: boolean
}

/** The plans of every phase, for the handlers registered at one moment. */
export interface Snapshot {
  /** By phase index (see `PhaseIndex`). */
  readonly plans: ReadonlyArray<PhasePlan>
  readonly empty: boolean
}

const planPhase = (entries: ReadonlyArray<Entry>, index: PhaseIndex): PhasePlan => {
  const withHook = entries.filter((entry) => entry.hooks[index] !== undefined)
  const awaiting = withHook.filter((entry) => entry.mode === "await")
  const priorities = Array.from(new Set(awaiting.map((entry) => entry.priority))).sort((a, b) => b - a)
  return {
    groups: priorities.map((priority) => awaiting.filter((entry) => entry.priority === priority)),
    background: withHook.filter((entry) => entry.mode === "background"),
    empty: withHook.length === 0
  }
}

export const makeSnapshot = (entries: ReadonlyArray<Entry>): Snapshot => {
  const plans = phases.map((_, index) => planPhase(entries, index))
  return { plans, empty: plans.every((plan) => plan.empty) }
}

/** A plan without the handlers that did not hear the call's start. */
export const withoutUnreached = (plan: PhasePlan, excluded: ReadonlySet<string>): PhasePlan => {
  const groups = plan.groups
    .map((group) => group.filter((entry) => !excluded.has(entry.name)))
    .filter((group) => group.length > 0)
  const background = plan.background.filter((entry) => !excluded.has(entry.name))
  return { groups, background, empty: groups.length === 0 && background.length === 0 }
}

/**
 * The stream chunks of one call for one await handler whose chunk hook
 * suspended: the delivery in flight, and the chunks waiting behind it, in
 * order (see `chunks`).
 */
export interface ChunkLine {
  running: { readonly cancel: () => void } | undefined
  readonly queue: Array<CallbackEvent>
  /** Told once the line is idle again. */
  readonly idle: Array<() => void>
}

/** A call's token (see `contract`): its snapshot, and the handlers that did not hear its start. */
export interface Token extends CallToken {
  readonly snapshot: Snapshot
  excluded: ReadonlySet<string> | undefined
  /** Await handlers with stream chunks still in flight or queued for this call. */
  lines: Map<Entry, ChunkLine> | undefined
  /** Settles a start dispatch that waits, once its caller says how it ended (see `Calls.run`). */
  opening: ((failed: boolean) => void) | undefined
}

/** What the parts of one dispatcher share. */
export interface State {
  readonly options: CallbackConfig.Resolved
  readonly slots: Slots
  /** The layer's clock (a `TestClock` in tests): it dates errors and bounds the shutdown drain. */
  readonly clock: Clock.Clock
  /** The dispatcher is shutting down: background deliveries are refused. */
  closed: boolean
  /** The refs hook fibers inherit from callers, kept between dispatches. */
  readonly inherited: InheritedRefs
  /** The resumes of its hooks' attempts that wait with no fiber (see `Invocation.awaitResume`). */
  readonly resumes: Microtasks
}
