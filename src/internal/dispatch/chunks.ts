/**
 * Stream chunks, dispatched without ever making the stream wait.
 *
 * A chunk is offered from the stream's own loop, synchronously. Background
 * handlers get it through their buffers like any event, except that a full
 * buffer drops it rather than wait. An await handler's chunk hook is called
 * at once, inline: when it completes without suspending (the common case, a
 * metric or a counter) that is all. When it suspends, the invocation goes on
 * by itself (under its timeout, holding a concurrency slot) and the call's
 * next chunks for that handler queue behind it, in order, in a line of the
 * call's own (bounded, with the handler's buffer size, across its calls);
 * the line runs them one after the other as each settles. The call's
 * terminal event waits for its lines to drain, bounded by each handler's
 * timeout, so that a handler hears its end after every chunk; what a line
 * still holds then is dropped, counted and logged.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Runtime from "effect/Runtime"
import type * as Tracer from "effect/Tracer"
import type { CallbackEvent } from "../../Events.js"
import { phaseIndex } from "../phases.js"
import type { Caller } from "./caller.js"
import { invoke, type Pending } from "./invocation.js"
import { enqueue } from "./lanes.js"
import * as Outcome from "./outcome.js"
import { type ChunkLine, type Entry, type State, type Token, withoutUnreached } from "./plan.js"
import { logFailures, result, Results } from "./report.js"
import { monotonicNow, startTimer } from "./timer.js"

const CHUNK = phaseIndex.chunk

/** Logs the failures of chunk deliveries on a fiber of their own: a stream's loop cannot wait for a log. */
const logLater = (caller: Caller, event: CallbackEvent, results: Results): void => {
  if (results.items.length === 0) return
  Runtime.runFork(
    Runtime.make({ context: Context.empty(), fiberRefs: caller.refs(), runtimeFlags: Runtime.defaultRuntimeFlags })
  )(logFailures(event, results.items.splice(0)))
}

/**
 * Runs a line's chunks from `event` on, synchronously as far as they go.
 * Without a line (the handler's first chunk of the call, or its line idle
 * and gone), one is made only when a delivery suspends: returned then.
 */
const drive = (
  state: State,
  entry: Entry,
  line: ChunkLine | undefined,
  event: CallbackEvent,
  caller: Caller,
  span: Tracer.AnySpan | undefined
): ChunkLine | undefined => {
  let next: CallbackEvent | undefined = event
  while (next !== undefined) {
    const current: CallbackEvent = next
    const results = new Results(false)
    const pending: Pending | undefined = invoke(
      state,
      entry,
      "chunk",
      entry.hooks[CHUNK]!,
      current,
      caller,
      span,
      monotonicNow(),
      (outcome, entry, startedAt) => {
        result(state.clock, entry, CHUNK, outcome, startedAt, results)
      }
    )
    logLater(caller, current, results)
    if (pending !== undefined) {
      const busy: ChunkLine = line ?? { running: undefined, queue: [], idle: [] }
      busy.running = pending
      pending.onSettled(() => {
        busy.running = undefined
        logLater(caller, current, results)
        const queued = busy.queue.shift()
        if (queued !== undefined) {
          entry.stats.pending--
          drive(state, entry, busy, queued, caller, span)
        } else wake(busy)
      })
      return busy
    }
    next = line?.queue.shift()
    if (next !== undefined) entry.stats.pending--
  }
  if (line !== undefined) wake(line)
  return line
}

const wake = (line: ChunkLine): void => {
  if (line.running !== undefined || line.queue.length > 0) return
  const idle = line.idle.splice(0)
  for (const f of idle) f()
}

/** Offers one stream chunk of a call to its handlers (see the module docs). Never waits. */
export const dispatchChunk = (
  state: State,
  token: Token,
  event: CallbackEvent,
  caller: Caller,
  span: Tracer.AnySpan | undefined
): void => {
  let plan = token.snapshot.plans[CHUNK]!
  if (token.excluded !== undefined) plan = withoutUnreached(plan, token.excluded)
  if (plan.empty) return
  if (plan.background.length > 0) {
    const results = new Results(false)
    for (let i = 0; i < plan.background.length; i++) {
      enqueue(state, plan.background[i]!, CHUNK, event, span, results, undefined)
    }
    logLater(caller, event, results)
  }
  for (let g = 0; g < plan.groups.length; g++) {
    const group = plan.groups[g]!
    for (let i = 0; i < group.length; i++) {
      const entry = group[i]!
      const line = token.lines?.get(entry)
      if (line !== undefined && (line.running !== undefined || line.queue.length > 0)) {
        if (entry.stats.pending >= entry.bufferSize) {
          const results = new Results(false)
          result(
            state.clock,
            entry,
            CHUNK,
            Outcome.dropped(entry.name, "chunk", "its stream chunks are queued to the buffer size"),
            monotonicNow(),
            results
          )
          logLater(caller, event, results)
        } else {
          entry.stats.pending++
          line.queue.push(event)
        }
        continue
      }
      const started = drive(state, entry, line, event, caller, span)
      if (line === undefined && started !== undefined) (token.lines ??= new Map()).set(entry, started)
    }
  }
}

/**
 * Waits until the call's chunk lines are idle, each bounded by its handler's
 * timeout; a line that is not idle by then is cut: its delivery in flight is
 * interrupted and its queued chunks are dropped (counted, logged).
 * `undefined` when no line is busy.
 */
export const awaitLines = (state: State, token: Token, caller: Caller): Effect.Effect<void> | undefined => {
  const lines = token.lines
  if (lines === undefined) return undefined
  const busy: Array<[Entry, ChunkLine]> = []
  for (const [entry, line] of lines) {
    if (line.running !== undefined || line.queue.length > 0) busy.push([entry, line])
  }
  token.lines = undefined
  if (busy.length === 0) return undefined
  return Effect.async<void>((resume) => {
    let left = busy.length
    const one = () => {
      if (--left === 0) resume(Effect.void)
    }
    const cancels: Array<() => void> = []
    for (const [entry, line] of busy) {
      let done = false
      const finish = () => {
        if (done) return
        done = true
        cancelTimer()
        one()
      }
      const cut = () => {
        if (done) return
        const dropped = line.queue.splice(0)
        const results = new Results(false)
        for (let i = 0; i < dropped.length; i++) {
          entry.stats.pending--
          result(
            state.clock,
            entry,
            CHUNK,
            Outcome.dropped(entry.name, "chunk", "the call ended before it could be delivered"),
            monotonicNow(),
            results
          )
        }
        if (dropped.length > 0) logLater(caller, dropped[0]!, results)
        line.running?.cancel()
        finish()
      }
      const cancelTimer = startTimer(entry.timeout, runtimeOf(caller), cut)
      line.idle.push(finish)
      cancels.push(cut)
    }
    // The terminal dispatch runs uninterruptibly; were it interrupted, the lines are cut.
    return Effect.sync(() => {
      for (const cut of cancels) cut()
    })
  })
}

const runtimeOf = (caller: Caller): Runtime.Runtime<never> =>
  Runtime.make({ context: Context.empty(), fiberRefs: caller.refs(), runtimeFlags: Runtime.defaultRuntimeFlags })
