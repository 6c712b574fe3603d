/**
 * The demo's own handlers, next to the library's:
 *
 * - `flaky`: fails, hangs or fails once at random, to show that a handler's trouble stays in its health
 *   report and never reaches the call;
 * - `audit-log`: a slow background handler (20–50 ms per event), to show that calls do not wait for it
 *   and that the dispatcher drains it before exit;
 * - `ledger`: counts every ended call's usage per user, independently of the token store, so the demo
 *   can check what the store holds.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as TokenUsage from "../layers/TokenUsage.js"
import * as Cost from "../src/Cost.js"
import type {
  CallbackEvent,
  ChunkEvent,
  EndEvent,
  ErrorEvent,
  StartEvent,
  ToolEndEvent,
  ToolErrorEvent
} from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import { hash } from "./Workload.js"

// =============================================================================
// Flaky
// =============================================================================

/**
 * The flaky handler's failure: `Broken` fails every attempt, `Transient` only some.
 *
 * @since 0.1.0
 * @category errors
 */
export class FlakyError extends Data.TaggedError("FlakyError")<{
  readonly reason: "Broken" | "Transient"
}> {
  override get message(): string {
    return this.reason === "Broken"
      ? "the flaky handler is broken for this event (every attempt fails)"
      : "the flaky handler failed this attempt (a retry may succeed)"
  }
}

/**
 * Options of {@link flaky}.
 *
 * @since 0.1.0
 * @category models
 */
export interface FlakyOptions {
  readonly seed: number
  /** Share of invocations that fail on every attempt. Default 0.2. */
  readonly failRate?: number | undefined
  /** Share of invocations that hang past the timeout. Default 0.05. */
  readonly hangRate?: number | undefined
  /** Share of invocations whose attempts fail at random (half of them), so retries help. Default 0.15. */
  readonly transientRate?: number | undefined
  readonly timeout?: Duration.DurationInput | undefined
}

const phaseCode = { start: 1, end: 2, error: 3 } as const

const phaseOf = (event: CallbackEvent) =>
  event._tag === "Start" ? phaseCode.start : event._tag === "End" ? phaseCode.end : phaseCode.error

/** The call's index in the workload, from the metadata the demo sets; -1 for calls from elsewhere. */
const indexOf = (event: CallbackEvent): number => {
  const index = event.call.metadata["demoCall"]
  return typeof index === "number" ? index : -1
}

/**
 * A handler that fails ~20% of its invocations (every attempt: health counts a failure after the
 * retries), hangs past its 200 ms timeout ~5% of the time, and fails some attempts of another ~15% that
 * a retry then fixes. Whether an invocation is broken or hangs depends only on the seed, the call and the
 * phase, so runs are reproducible; transient failures are drawn from `Random`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const flaky = (options: FlakyOptions): Handler.Handler<FlakyError> => {
  const failRate = options.failRate ?? 0.2
  const hangRate = options.hangRate ?? 0.05
  const transientRate = options.transientRate ?? 0.15
  const hook = (event: CallbackEvent): Effect.Effect<void, FlakyError> => {
    const fate = hash(options.seed, indexOf(event), phaseOf(event))
    if (fate < hangRate) return Effect.never
    if (fate < hangRate + failRate) return Effect.fail(new FlakyError({ reason: "Broken" }))
    if (fate < hangRate + failRate + transientRate) {
      return Effect.flatMap(
        Random.nextBoolean,
        (fails) => fails ? Effect.fail(new FlakyError({ reason: "Transient" })) : Effect.void
      )
    }
    return Effect.void
  }
  return Handler.make({
    name: "flaky",
    onLlmStart: hook,
    onLlmEnd: hook,
    onLlmError: hook,
    timeout: options.timeout ?? Duration.millis(200),
    retry: Schedule.spaced("10 millis").pipe(Schedule.intersect(Schedule.recurs(2)))
  })
}

// =============================================================================
// Audit log
// =============================================================================

/**
 * A slow background handler: it "writes an audit record" (waits 20–50 ms) for every event and counts
 * the records in `written`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const auditLog = (written: Ref.Ref<number>): Handler.Handler => {
  const write = (_: CallbackEvent): Effect.Effect<void> =>
    Effect.flatMap(
      Random.nextIntBetween(20, 51),
      (ms) => Effect.zipRight(Effect.sleep(Duration.millis(ms)), Ref.update(written, (n) => n + 1))
    )
  return Handler.make({
    name: "audit-log",
    onLlmStart: write,
    onLlmEnd: write,
    onLlmError: write,
    mode: "background",
    concurrency: 4,
    timeout: "5 seconds"
  })
}

// =============================================================================
// Ledger
// =============================================================================

/**
 * Token counts and cost of one user as the ledger saw them.
 *
 * @since 0.1.0
 * @category models
 */
export interface LedgerEntry {
  readonly calls: number
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  readonly costMicros: number
}

/**
 * What the ledger counted.
 *
 * @since 0.1.0
 * @category models
 */
export interface LedgerState {
  readonly users: Readonly<Record<string, LedgerEntry>>
  /** Tokens of the calls whose provider reported usage. */
  readonly reportedTokens: number
  /** Tokens of the calls without usage, counted by the same estimator the detailed handler uses. */
  readonly estimatedTokens: number
  readonly estimatedCalls: number
  /** Tool runs heard (`tool_end` or `tool_error`), and those whose parent is a model call heard before. */
  readonly toolRuns: number
  readonly toolRunsWithParent: number
  /** Stream chunks heard, by kind. */
  readonly chunks: { readonly text: number; readonly reasoning: number }
}

const emptyEntry: LedgerEntry = { calls: 0, promptTokens: 0, completionTokens: 0, totalTokens: 0, costMicros: 0 }

/**
 * The ledger: a handler and what it counted.
 *
 * @since 0.1.0
 * @category models
 */
export interface Ledger {
  readonly handler: Handler.Handler<TokenUsage.TokenizerError>
  readonly state: Effect.Effect<LedgerState>
}

/**
 * Builds the ledger. Its usage of a call is `TokenUsage.resolveUsage`: what the provider reported, else
 * the estimate the detailed token-usage handler records.
 *
 * @since 0.1.0
 * @category constructors
 */
export const ledger: Effect.Effect<Ledger> = Effect.gen(function*() {
  const estimator = yield* TokenUsage.makeEstimator
  const state = yield* Ref.make<LedgerState>({
    users: {},
    reportedTokens: 0,
    estimatedTokens: 0,
    estimatedCalls: 0,
    toolRuns: 0,
    toolRunsWithParent: 0,
    chunks: { text: 0, reasoning: 0 }
  })
  // Model calls heard starting, by id: a tool run's parent must be one of them. Cleared at each end.
  const open = new Set<string>()
  let text = 0
  let reasoning = 0
  const onLlmEnd = (event: EndEvent): Effect.Effect<void, TokenUsage.TokenizerError> => {
    const userId = event.call.userId
    if (userId === undefined) return Effect.void
    return Effect.flatMap(TokenUsage.resolveUsage(estimator, event), (usage) =>
      Ref.update(state, (current) => {
        const entry = current.users[userId] ?? emptyEntry
        const estimated = usage.estimated === true
        return {
          ...current,
          users: {
            ...current.users,
            [userId]: {
              calls: entry.calls + 1,
              promptTokens: entry.promptTokens + usage.promptTokens,
              completionTokens: entry.completionTokens + usage.completionTokens,
              totalTokens: entry.totalTokens + usage.totalTokens,
              costMicros: entry.costMicros + (Cost.microsOf(event) ?? 0)
            }
          },
          reportedTokens: current.reportedTokens + (estimated ? 0 : usage.totalTokens),
          estimatedTokens: current.estimatedTokens + (estimated ? usage.totalTokens : 0),
          estimatedCalls: current.estimatedCalls + (estimated ? 1 : 0)
        }
      }))
  }
  const onToolTerminal = (event: ToolEndEvent | ToolErrorEvent) =>
    Ref.update(state, (current) => ({
      ...current,
      toolRuns: current.toolRuns + 1,
      toolRunsWithParent: current.toolRunsWithParent +
        (event.call.parentCallId !== undefined && open.has(event.call.parentCallId) ? 1 : 0)
    }))
  return {
    handler: Handler.make({
      name: "ledger",
      onLlmStart: Handler.sync((event: StartEvent) => void open.add(event.call.callId)),
      // Chunks are counted in the hook call itself: no fiber, never slowing a stream.
      onLlmChunk: Handler.sync((event: ChunkEvent) => {
        if (event.kind === "text") text++
        else reasoning++
      }),
      onToolEnd: onToolTerminal,
      onToolError: onToolTerminal,
      onLlmEnd: (event: EndEvent) => Effect.ensuring(onLlmEnd(event), Effect.sync(() => open.delete(event.call.callId))),
      onLlmError: Handler.sync((event: ErrorEvent) => void open.delete(event.call.callId))
    }),
    state: Effect.map(Ref.get(state), (current) => ({ ...current, chunks: { text, reasoning } }))
  }
})
