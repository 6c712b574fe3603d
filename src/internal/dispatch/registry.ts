/**
 * The dispatcher itself: its registry of handlers (each validated, given its
 * metric labels and, in background mode, its lanes and consumers), the
 * snapshot of plans that new calls take, health, flush, and the close.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import type * as CallbackConfig from "../../CallbackConfig.js"
import * as Metrics from "../../CallbackMetrics.js"
import type { CallbackEvent } from "../../Events.js"
import { type Handler, hookOf, type Mode } from "../../Handler.js"
import { HandlerRegistrationError } from "../../HandlerError.js"
import { activeHook, makeHandlerLabels } from "../metricLabels.js"
import { installTemplate } from "../parents.js"
import { phaseIndex, phases } from "../phases.js"
import { Buffer } from "./buffer.js"
import { Deadlines } from "./deadlines.js"
import { type Calls, CallsTypeId, type HandlerHealth, type HealthReport, type Service } from "./contract.js"
import { dispatchChunk } from "./chunks.js"
import { dispatchWith, run, settleStart } from "./fanout.js"
import { Microtasks } from "./hookFiber.js"
import { callerOf, HookRefs, InheritedRefs } from "./caller.js"
import { consume, drain, flushEntry, shutdownSummary } from "./lanes.js"
import { type Entry, type Hook, type Lane, makeSnapshot, makeStats, type Snapshot, type State, type Token } from "./plan.js"
import { Results } from "./report.js"
import { Slots } from "./slots.js"
import { liveClock } from "./timer.js"

interface Checked {
  readonly timeout: Duration.Duration
  readonly mode: Mode
  readonly priority: number
  readonly bufferSize: number
  readonly concurrency: number
}

/** A handler's policy, checked, with the dispatcher's defaults for what it leaves unset. */
const validate = (
  state: State,
  registered: ReadonlyMap<string, Entry>,
  handler: Handler<unknown, unknown>
): Either.Either<Checked, HandlerRegistrationError> => {
  const options = state.options
  const fail = (reason: HandlerRegistrationError["reason"], message: string) =>
    Either.left(new HandlerRegistrationError({ reason, handler: String(handler.name), message }))
  if (typeof handler.name !== "string" || handler.name.trim() === "") {
    return fail("InvalidName", "a handler needs a non-empty name")
  }
  if (state.closed) return fail("Closed", `cannot register ${handler.name}: the dispatcher is closed`)
  if (registered.has(handler.name)) {
    return fail("DuplicateName", `a handler named ${JSON.stringify(handler.name)} is already registered`)
  }
  const policy = handler.policy
  let timeout = options.timeout
  if (policy.timeout !== undefined) {
    const decoded = Duration.decodeUnknown(policy.timeout)
    // `Duration` clamps negative numbers to zero: reject them before it does.
    const negative = (typeof policy.timeout === "number" || typeof policy.timeout === "bigint") && policy.timeout < 0
    if (negative || Option.isNone(decoded) || Duration.toMillis(decoded.value) < 0) {
      return fail("InvalidPolicy", `${handler.name}: timeout must be a non-negative duration, got ${String(policy.timeout)}`)
    }
    timeout = decoded.value
  }
  const mode = policy.mode ?? options.mode
  if (mode !== "await" && mode !== "background") {
    return fail("InvalidPolicy", `${handler.name}: mode must be "await" or "background", got ${String(mode)}`)
  }
  const priority = policy.priority ?? 0
  if (!Number.isFinite(priority)) {
    return fail("InvalidPolicy", `${handler.name}: priority must be a finite number, got ${String(priority)}`)
  }
  const bufferSize = policy.bufferSize ?? options.bufferSize
  if (!Number.isSafeInteger(bufferSize) || bufferSize < 1) {
    return fail("InvalidPolicy", `${handler.name}: bufferSize must be an integer >= 1, got ${String(bufferSize)}`)
  }
  const concurrency = policy.concurrency ?? 1
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    return fail("InvalidPolicy", `${handler.name}: concurrency must be an integer >= 1, got ${String(concurrency)}`)
  }
  return Either.right({ timeout, mode, priority, bufferSize, concurrency })
}

const healthOf = (entry: Entry): HandlerHealth => ({
  name: entry.name,
  mode: entry.mode,
  priority: entry.priority,
  successes: entry.stats.successes,
  failures: entry.stats.failures,
  defects: entry.stats.defects,
  timeouts: entry.stats.timeouts,
  interruptions: entry.stats.interruptions,
  retries: entry.stats.retries,
  dropped: entry.stats.dropped,
  inFlight: entry.stats.inFlight,
  overrunning: entry.stats.overrunning,
  pending: entry.stats.pending,
  lastError: entry.stats.lastError === undefined ? Option.none() : Option.some(entry.stats.lastError)
})

/** The two hex digits of every byte. */
const hexBytes: ReadonlyArray<string> = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, "0"))

/**
 * Per-dispatcher call ids: see `Calls.nextCallId`. The counter's 12 hex
 * digits are its 10 high ones, formatted once every 256 ids, and a table's
 * two low ones: one concatenation per id.
 */
const callIds = (): () => string => {
  const prefix = crypto.randomUUID().slice(0, 24)
  let counter = 0
  let high = ""
  return () => {
    const low = counter % 256
    if (low === 0) high = prefix + (counter / 256).toString(16).padStart(10, "0")
    counter++
    return high + hexBytes[low]!
  }
}

/** Builds a dispatcher; closing the scope drains the background handlers. */
export const make = (options: CallbackConfig.Resolved): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    // Fibers forked from where the dispatcher is built get a parent holder at birth (see `ParentStack`).
    yield* installTemplate
    const state: State = {
      options,
      slots: new Slots(options.maxConcurrent),
      clock: yield* Effect.clock,
      closed: false,
      inherited: new InheritedRefs(),
      resumes: new Microtasks()
    }
    const entries = new Map<string, Entry>()
    let snapshot: Snapshot = makeSnapshot([])
    // Registered at once so that the gauge is exported before any invocation suspends.
    activeHook.update(0)

    const defaultSchedule: Schedule.Schedule<unknown, unknown> | undefined =
      options.enableRecovery && options.maxRetryAttempts > 1
        ? Schedule.exponential(options.retryDelay).pipe(Schedule.intersect(Schedule.recurs(options.maxRetryAttempts - 1)))
        : undefined

    const backgrounds = () => Array.from(entries.values()).filter((entry) => entry.lanes !== undefined)

    const register = <E, R>(
      handler: Handler<E, R>,
      context: Context.Context<R>
    ): Effect.Effect<void, HandlerRegistrationError, Scope.Scope> =>
      Effect.gen(function*() {
        const checked = yield* validate(state, entries, handler as Handler<unknown, unknown>)
        const lanes = checked.mode === "background"
          ? Array.from({ length: checked.concurrency }, (): Lane => ({
            buffer: new Buffer(Math.max(1, Math.ceil(checked.bufferSize / checked.concurrency)), state.clock === liveClock),
            waiters: []
          }))
          : undefined
        const hooks = phases.map((phase) => hookOf(handler, phase) as Hook | undefined)
        const entry: Entry = {
          name: handler.name,
          hooks,
          endBatch: checked.mode === "background" ? handler.onLlmEndBatch as Hook | undefined : undefined,
          context: context as Context.Context<never>,
          spanInContext: Option.isSome(Context.getOption(context as Context.Context<never>, Tracer.ParentSpan)),
          timeout: checked.timeout,
          deadlines: Duration.isFinite(checked.timeout) ? new Deadlines(checked.timeout) : undefined,
          schedule: options.enableRecovery ? handler.policy.retry ?? defaultSchedule : undefined,
          mode: checked.mode,
          priority: checked.priority,
          labels: makeHandlerLabels(handler.name, hooks, checked.mode === "background"),
          stats: makeStats(),
          lanes,
          bufferSize: checked.bufferSize,
          hookRefs: new HookRefs()
        }
        if (lanes !== undefined) {
          // Exported at 0 from registration: an alert on them sees 0, not "no data".
          Metrics.droppedTotal.unsafeUpdate(0, entry.labels.handler)
          Metrics.queueDepth.unsafeUpdate(0, entry.labels.handler)
          // Finalizers run in reverse: the drain (below) while the consumers are
          // alive, then the consumers are interrupted, then one summary line.
          yield* Effect.addFinalizer(() => shutdownSummary(state, entry))
          for (const lane of lanes) yield* Effect.forkScoped(Effect.interruptible(consume(state, entry, lane)))
        }
        yield* Effect.addFinalizer(() =>
          Effect.suspend(() => {
            // From now on the handler hears no new call, and takes no new background delivery.
            entry.stats.closing = true
            entries.delete(entry.name)
            snapshot = makeSnapshot(Array.from(entries.values()))
            return lanes === undefined ? Effect.void : drain(state, entry)
          })
        )
        entries.set(entry.name, entry)
        snapshot = makeSnapshot(Array.from(entries.values()))
      })

    const health = Effect.sync((): HealthReport => {
      const all = Array.from(entries.values())
      const handlers = all.map(healthOf)
      const degraded = all.some((entry) => entry.stats.lastOutcome !== undefined && entry.stats.lastOutcome !== "success")
      return {
        status: state.closed ? "closed" : degraded ? "degraded" : "healthy",
        handlers,
        inFlight: state.slots.active,
        pending: handlers.reduce((n, h) => n + h.pending, 0)
      }
    })

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        state.closed = true
        return Effect.forEach(backgrounds(), (entry) => drain(state, entry), { concurrency: "unbounded", discard: true })
      })
    )

    const begin = (): Token => ({ snapshot, excluded: undefined, lines: undefined, opening: undefined, empty: snapshot.empty })
    // Tokens are made by `begin` above only: the cast recovers what it made.
    const calls: Calls = {
      begin,
      nextCallId: callIds(),
      run: (token, event: CallbackEvent, fiber) => run(state, token as Token, event, fiber, new Results(false)),
      settleStart: (token, failed) => settleStart(token as Token, failed),
      dispatch: (token, event) => dispatchWith(state, token as Token, event),
      chunks: (token, fiber, span) => {
        if ((token as Token).snapshot.plans[phaseIndex.chunk]!.empty) return undefined
        const caller = callerOf(fiber, state)
        return (event) => dispatchChunk(state, token as Token, event, caller, span)
      }
    }
    return {
      [CallsTypeId]: calls,
      register,
      dispatch: (event) => Effect.suspend(() => dispatchWith(state, begin(), event)),
      flush: Effect.suspend(() =>
        Effect.forEach(backgrounds(), flushEntry, { concurrency: "unbounded", discard: true })
      ),
      health,
      handlers: Effect.sync(() => Array.from(entries.keys()))
    }
  })
