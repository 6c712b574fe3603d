/**
 * Background handlers: each is fed through bounded buffers (lanes), one
 * consumer fiber per lane. A call's deliveries always take the same lane, so
 * that its start comes before its end. A producer finding the buffer full
 * waits for room (backpressure) up to the handler's timeout, then the
 * delivery is dropped. At close the buffers are drained, bounded by the
 * shutdown timeout; what is left is counted once, as not delivered.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import type * as Tracer from "effect/Tracer"
import * as Metrics from "../../CallbackMetrics.js"
import type { CallbackEvent } from "../../Events.js"
import { type PhaseIndex, phaseIndex, phases, roleAt } from "../phases.js"
import type { HandlerResult } from "./contract.js"
import { type Caller, callerOf, runsHookOf, tracingOf, type Tracing } from "./caller.js"
import { awaitAll, cancelAll, type Done, invokeTraced, type Pending } from "./invocation.js"
import * as Outcome from "./outcome.js"
import type { Delivery, Entry, Lane, State } from "./plan.js"
import { logFailures, result, Results } from "./report.js"
import { liveClock, monotonicNow, startTimer } from "./timer.js"

const END = phaseIndex.end

/** The least real time the shutdown drain waits on a clock other than the live one (see `drain`). */
const realTimeFloor = Duration.seconds(5)

/** Moves waiting producers into the buffer while it has room, in order. */
const admitWaiters = (lane: Lane): void => {
  const waiters = lane.waiters
  let done = 0
  while (done < waiters.length) {
    const waiter = waiters[done]!
    if (waiter.waiting()) {
      if (!lane.buffer.offer(waiter.delivery)) break
      waiter.admitted()
    }
    done++
  }
  if (done > 0) waiters.splice(0, done)
}

/**
 * Puts a delivery in a lane, waiting behind the producers already waiting
 * (no timeout: for flush markers, which must follow every delivery before them).
 */
const offerInOrder = (lane: Lane, delivery: Delivery): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (lane.waiters.length === 0 && lane.buffer.offer(delivery)) return resume(Effect.void)
    let waiting = true
    const release = () => {
      waiting = false
      resume(Effect.void)
    }
    lane.waiters.push({ delivery, waiting: () => waiting, admitted: release, abandon: release })
    return Effect.sync(() => {
      waiting = false
    })
  })

/**
 * The key of an event's lane: its call's id, or for a tool run the call that
 * asked for it, so that a call's deliveries, its tools' included, keep their
 * order.
 */
const laneKeyOf = (event: CallbackEvent): string =>
  event._tag === "ToolStart" || event._tag === "ToolEnd" || event._tag === "ToolError"
    ? event.call.parentCallId ?? event.call.callId
    : event.call.callId

/** A lane: a hash of its key, so that all the deliveries of one key keep their order. */
const laneOf = (callId: string, lanes: number): number => {
  let hash = 0
  for (let i = 0; i < callId.length; i++) hash = (hash * 31 + callId.charCodeAt(i)) | 0
  return (hash >>> 0) % lanes
}

/** A delivery put in its buffer without waiting. */
const queued = (state: State, entry: Entry, index: PhaseIndex, results: Results): undefined => {
  Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
  // Queued is not counted: only a report shows it (no clock is read otherwise).
  if (results.collect) result(state.clock, entry, index, Outcome.QUEUED, monotonicNow(), results)
  return undefined
}

/**
 * Offers an event to a background handler. Returns `undefined` when it was
 * buffered (or refused) at once, else the effect that waits for room. Stream
 * chunks (`fiber` undefined) never wait: a full buffer drops them.
 */
export const enqueue = (
  state: State,
  entry: Entry,
  index: PhaseIndex,
  event: CallbackEvent,
  span: Tracer.AnySpan | undefined,
  results: Results,
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined
): Effect.Effect<void> | undefined => {
  const phase = phases[index]!
  const opening = roleAt[index] === "open"
  const lanes = entry.lanes!
  const lane = lanes.length === 1 ? lanes[0]! : lanes[laneOf(laneKeyOf(event), lanes.length)]!
  if (state.closed || entry.stats.closing) {
    const why = state.closed ? "the dispatcher is shutting down" : "the handler is being unregistered"
    result(state.clock, entry, index, Outcome.dropped(entry.name, phase, why), monotonicNow(), results)
    if (opening) (results.notStarted ??= []).push(entry.name)
    return undefined
  }
  const delivery: Delivery = { _tag: "Event", event, index, span }
  entry.stats.pending++
  // Producers already waiting go first.
  if (lane.waiters.length === 0 && lane.buffer.offer(delivery)) return queued(state, entry, index, results)
  if (fiber === undefined) {
    entry.stats.pending--
    result(state.clock, entry, index, Outcome.dropped(entry.name, phase, "buffer full (stream chunks never wait)"), monotonicNow(), results)
    return undefined
  }
  if (runsHookOf(fiber, state)) {
    // A call made by a hook (a handler that calls a model itself): when it
    // is this handler's, the hook that waits for the call keeps the consumer
    // that would make room, so a wait here could last until the timeout,
    // and take the call's delivery with it. It is put in past the capacity.
    lane.buffer.put(delivery)
    return queued(state, entry, index, results)
  }
  const now = monotonicNow()
  // Buffer full: wait for room (backpressure), bounded by the handler's
  // timeout; then the delivery is dropped, counted and logged.
  return Effect.async<void>((resume) => {
    let waiting = true
    let cancelTimer: (() => void) | undefined
    const giveUp = (why: string) => {
      waiting = false
      if (cancelTimer !== undefined) cancelTimer()
      entry.stats.pending--
      result(state.clock, entry, index, Outcome.dropped(entry.name, phase, why), now, results)
      // A handler whose start was dropped did not hear it: nothing more of the run either.
      if (opening) (results.notStarted ??= []).push(entry.name)
    }
    lane.waiters.push({
      delivery,
      waiting: () => waiting,
      admitted: () => {
        waiting = false
        if (cancelTimer !== undefined) cancelTimer()
        Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
        result(state.clock, entry, index, Outcome.QUEUED, now, results)
        resume(Effect.void)
      },
      abandon: () => {
        if (!waiting) return
        waiting = false
        if (cancelTimer !== undefined) cancelTimer()
        resume(Effect.void)
      }
    })
    cancelTimer = startTimer(
      entry.timeout,
      Runtime.make({ context: Context.empty(), fiberRefs: fiber.getFiberRefs(), runtimeFlags: Runtime.defaultRuntimeFlags }),
      () => {
        if (!waiting) return
        giveUp(`buffer full for ${Duration.format(entry.timeout)}`)
        resume(Effect.void)
      }
    )
    // Interrupted while waiting (a start dispatch whose caller was interrupted).
    return Effect.sync(() => {
      if (waiting) giveUp("the caller was interrupted while the buffer was full")
    })
  })
}

/**
 * Accounts for background deliveries that will never run (shutdown):
 * counts the events among `deliveries` as dropped and not delivered, and
 * releases flush markers.
 */
const undelivered = (entry: Entry, deliveries: Iterable<Delivery>): Effect.Effect<void> =>
  Effect.sync(() => {
    let lost = 0
    for (const delivery of deliveries) {
      if (delivery._tag === "Flush") Deferred.unsafeDone(delivery.done, Exit.void)
      else lost++
    }
    if (lost === 0) return
    entry.stats.pending -= lost
    entry.stats.dropped += lost
    entry.stats.undelivered += lost
    Metrics.droppedTotal.unsafeUpdate(lost, entry.labels.handler)
    Metrics.errorsTotal.unsafeUpdate(lost, entry.labels.error.dropped)
    Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
  })

/**
 * One line per handler at close, when something was not delivered: the
 * deliveries never run (buffered, waiting for room, or left in a batch)
 * and those interrupted in progress, each counted once.
 */
export const shutdownSummary = (state: State, entry: Entry): Effect.Effect<void> =>
  Effect.suspend(() => {
    const lost = entry.stats.undelivered + entry.stats.interruptedAtShutdown
    if (lost === 0) return Effect.void
    return Effect.logError(
      `callback handler ${entry.name}: ${lost} background deliveries not delivered at shutdown ` +
        `(${entry.stats.undelivered} never run, ${entry.stats.interruptedAtShutdown} interrupted in progress; ` +
        `shutdown timeout ${Duration.format(state.options.shutdownTimeout)})` +
        (state.clock === liveClock
          ? ""
          : "; the dispatcher runs on a clock other than the live one (a TestClock?): a handler " +
            "sleeping on it waits until the clock is moved; adjust it and Dispatcher.flush before the layer closes")
    ).pipe(
      Effect.annotateLogs({
        handler: entry.name,
        undelivered: entry.stats.undelivered,
        interrupted: entry.stats.interruptedAtShutdown
      })
    )
  })

/**
 * A batch of a background handler's deliveries in progress: `next` is the
 * first delivery not started yet. Its deliveries run one at a time:
 * `current` is the one running (one event, or a run of end events for the
 * batch hook), which `done` accounts.
 */
class Batch {
  next = 0
  current: Delivery | ReadonlyArray<CallbackEvent> | undefined = undefined
  /** The delivery that suspended, waited for: cancelled if the consumer is interrupted meanwhile. */
  running: Pending | undefined = undefined
  /** When the last delivery settled: the next one starts then (one clock read per delivery). */
  time = monotonicNow()
  readonly failed: Array<readonly [CallbackEvent, ReadonlyArray<HandlerResult>]> = []
  /** Where results worth logging land; replaced once it holds some. */
  private results = new Results(false)

  constructor(readonly state: State, readonly entry: Entry, readonly items: ReadonlyArray<Delivery>) {}

  readonly done: Done = (outcome, _entry, startedAt) => {
    const current = this.current!
    if (Array.isArray(current)) {
      for (const event of current) this.settled(event, END, outcome, startedAt)
    } else {
      const delivery = current as Delivery & { readonly _tag: "Event" }
      this.settled(delivery.event, delivery.index, outcome, startedAt)
    }
  }

  /** Accounts one delivery's outcome, and keeps its failure for the log. */
  private settled(event: CallbackEvent, index: PhaseIndex, outcome: Outcome.Outcome, startedAt: number): void {
    const entry = this.entry
    entry.stats.pending--
    if (outcome.status === "interrupted" && entry.stats.closing) entry.stats.interruptedAtShutdown++
    this.time = result(this.state.clock, entry, index, outcome, startedAt, this.results)
    if (this.results.items.length > 0) {
      this.failed.push([event, this.results.items])
      this.results = new Results(false)
    }
  }
}

/**
 * The consumer of one lane of a background handler: takes deliveries in
 * batches and runs them in order, synchronously as far as they go (a batch
 * of handlers that complete at once costs one fiber turn), waiting for one
 * that suspends before the next.
 */
export const consume = (state: State, entry: Entry, lane: Lane): Effect.Effect<never> => {
  const runBatch = (batch: Batch, caller: Caller, tracing: Tracing | undefined): Effect.Effect<void> => {
    const items = batch.items
    for (let i = batch.next; i < items.length; i++) {
      const delivery = items[i]!
      if (delivery._tag === "Flush") {
        batch.next = i + 1
        Deferred.unsafeDone(delivery.done, Exit.void)
        continue
      }
      let running: Pending | undefined
      if (delivery.index === END && entry.endBatch !== undefined) {
        // A run of consecutive end events goes to the batch hook at once.
        const events: Array<CallbackEvent> = [delivery.event]
        while (i + 1 < items.length) {
          const next = items[i + 1]!
          if (next._tag !== "Event" || next.index !== END) break
          events.push(next.event)
          i++
        }
        // Started: from now on the run is accounted by its own outcome.
        batch.next = i + 1
        batch.current = events
        running = invokeTraced(state, entry, "end", entry.endBatch, events, caller, delivery.span, tracing, batch.time, batch.done)
      } else {
        batch.next = i + 1
        batch.current = delivery
        running = invokeTraced(
          state,
          entry,
          phases[delivery.index]!,
          entry.hooks[delivery.index]!,
          delivery.event,
          caller,
          delivery.span,
          tracing,
          batch.time,
          batch.done
        )
      }
      if (running !== undefined) {
        // Wait for the delivery that suspended, then run the rest of the batch.
        batch.running = running
        return Effect.zipRight(
          awaitAll([running]),
          Effect.withFiberRuntime<void>((fiber) => runBatch(batch, callerOf(fiber, state), tracing))
        )
      }
    }
    Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
    return batch.failed.length === 0
      ? Effect.void
      : Effect.forEach(batch.failed, ([event, results]) => logFailures(event, results), { discard: true })
  }
  return Effect.forever(
    Effect.zipRight(
      lane.buffer.waitNonEmpty,
      // Taken and started in one step: interrupted before it, the deliveries
      // stay in the buffer (the drain counts them); after it, `onInterrupt` does.
      Effect.withFiberRuntime<void>((fiber) => {
        const batch = new Batch(state, entry, lane.buffer.takeAll())
        // Room was made: let waiting producers in before running the batch.
        admitWaiters(lane)
        // Interrupted (shutdown): the delivery in progress is accounted by
        // its own (interrupted) outcome, the ones not started yet once, here.
        return Effect.onInterrupt(
          runBatch(batch, callerOf(fiber, state), tracingOf(fiber)),
          () =>
            Effect.zipRight(
              Effect.sync(() => {
                if (batch.running !== undefined) cancelAll(state.slots, [batch.running])
              }),
              undelivered(entry, batch.items.slice(batch.next))
            )
        )
      })
    )
  )
}

/** Waits until every delivery buffered so far in the handler's lanes has run. */
export const flushEntry = (entry: Entry): Effect.Effect<void> =>
  Effect.forEach(
    entry.lanes!,
    (lane) =>
      Effect.flatMap(Deferred.make<void>(), (done) =>
        Effect.zipRight(offerInOrder(lane, { _tag: "Flush", done }), Deferred.await(done))),
    { concurrency: "unbounded", discard: true }
  )

/**
 * The drain at close. Finalizers run uninterruptibly; the flush is made
 * interruptible so that the shutdown timeout can cut it short. What is still
 * buffered, or still waiting for room, then never runs: it is counted as not
 * delivered (a delivery in progress is interrupted and counted as such).
 */
export const drain = (state: State, entry: Entry): Effect.Effect<void> =>
  Effect.interruptible(Effect.zipRight(Effect.sync(() => (entry.stats.closing = true)), flushEntry(entry))).pipe(
    // Bounded by the layer's clock (a TestClock moves it in tests), and, on
    // any other clock than the live one, by real time too: under a
    // TestClock nobody moves, a busy handler would otherwise hold the
    // layer's close for ever. The real-time bound is a safety net, never
    // shorter than `realTimeFloor`, so that a test moving its clock on a
    // slow machine still sees the virtual bound decide.
    Effect.timeoutOption(state.options.shutdownTimeout),
    Effect.withClock(state.clock),
    (bounded) =>
      state.clock === liveClock
        ? bounded
        : Effect.map(
          Effect.withClock(
            Effect.timeoutOption(bounded, Duration.max(state.options.shutdownTimeout, realTimeFloor)),
            liveClock
          ),
          Option.flatten
        ),
    Effect.flatMap((drained) =>
      Option.isSome(drained) ? Effect.void : Effect.forEach(entry.lanes!, (lane) =>
        Effect.suspend(() => {
          const buffered = lane.buffer.takeAll()
          const waiting: Array<Delivery> = []
          for (const waiter of lane.waiters) {
            if (!waiter.waiting()) continue
            waiting.push(waiter.delivery)
            waiter.abandon()
          }
          lane.waiters.length = 0
          return undelivered(entry, [...buffered, ...waiting])
        }), { discard: true })
    )
  )
