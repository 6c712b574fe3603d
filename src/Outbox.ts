/**
 * No usage record lost: an outbox in front of a `TokenStore`. A record the
 * store refuses for a transient reason (`Unavailable`, `Timeout`), or whose
 * attempt is cut short (the handler's timeout, an interruption), is kept in
 * the outbox (`"queued"`) and retried with backoff until the store takes it;
 * records are idempotent per call id, so a record that had reached the store
 * anyway counts once. Records that fail for good (invalid input) fail as
 * before.
 *
 * - **Bounded**: at most `maxRecords` records and `maxBytes` bytes are taken
 *   in (records a previous run left in durable storage are all replayed).
 *   A record that does not fit is refused (the record fails `Unavailable`),
 *   counted in `token_outbox_dropped_total{reason="full"}` and logged with
 *   its user, cycle and tokens, so that it can be reconciled by hand.
 * - **Dedupe window**: a record older than `maxAge` (default 23 hours) is
 *   given up, counted (`reason="expired"`) and logged: past the store's
 *   idempotency window a replay could count twice. A `maxAge` longer than the
 *   store's window (`TokenStore.idempotencyWindowMillis`) is refused when the
 *   layer is built.
 * - **Durable**: where pending records are kept is the `OutboxStorage`
 *   service: `layerStorageMemory` (lost with the process: what is pending at
 *   shutdown is logged), or `layers/SqlOutbox` (a SQLite file: a record is
 *   written there before `record` answers `"queued"`, survives a crash or
 *   `SIGKILL`, and is replayed when the layer starts again).
 * - **Visible**: `Outbox.stats` (pending, bytes, oldest age, written,
 *   dropped, expired, rejected) and the metrics `token_outbox_pending`,
 *   `token_outbox_bytes`, `token_outbox_oldest_age_seconds`,
 *   `token_outbox_written_total`, `token_outbox_dropped_total{reason}`.
 *
 * The layer is scoped: closing it tries to write what is pending (bounded by
 * `shutdownTimeout`). With durable storage it stops at the first round the
 * store takes nothing from (what is left is kept for the next start, or for
 * another process on the same storage: a store that refuses does not hold the
 * process up); in memory it goes on trying until `shutdownTimeout`, and what
 * is left is logged as lost, record by record.
 *
 * @since 0.3.0
 */
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { liveClock } from "./internal/dispatch/timer.js"
import * as TokenStore from "./TokenStore.js"

// -----------------------------------------------------------------------------
// Storage
// -----------------------------------------------------------------------------

/**
 * A record waiting in the outbox: its id (one per user and call), the
 * record, and when it was first queued (epoch ms).
 *
 * @since 0.3.0
 * @category models
 */
export interface Entry {
  readonly id: string
  readonly input: TokenStore.RecordInput
  readonly enqueuedAt: number
}

/**
 * The storage of the outbox failed (the durable file cannot be written).
 *
 * @since 0.3.0
 * @category errors
 */
export class OutboxError extends Data.TaggedError("OutboxError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * Where pending records are kept. `append` answers once the entry is stored
 * (durably, for a durable storage).
 *
 * @since 0.3.0
 * @category models
 */
export interface Storage {
  /** Survives the process: what is pending at shutdown or at a crash is replayed by the next start. */
  readonly durable: boolean
  readonly load: Effect.Effect<ReadonlyArray<Entry>, OutboxError>
  readonly append: (entry: Entry) => Effect.Effect<void, OutboxError>
  /**
   * Stores several entries at once (one transaction: a durable storage pays
   * its write to disk once for all); when missing, they are appended one by
   * one.
   *
   * @since 0.4.0
   */
  readonly appendAll?: ((entries: ReadonlyArray<Entry>) => Effect.Effect<void, OutboxError>) | undefined
  readonly remove: (ids: ReadonlyArray<string>) => Effect.Effect<void, OutboxError>
}

/**
 * @since 0.3.0
 * @category tags
 */
export class OutboxStorage extends Context.Tag("effect-llm-callbacks/Outbox/OutboxStorage")<OutboxStorage, Storage>() {}

/**
 * The outbox kept in memory: nothing survives the process (what is pending
 * at shutdown is logged as lost).
 *
 * @since 0.3.0
 * @category layers
 */
export const layerStorageMemory: Layer.Layer<OutboxStorage> = Layer.sync(OutboxStorage, () => ({
  durable: false,
  load: Effect.succeed([]),
  append: () => Effect.void,
  remove: () => Effect.void
}))

/**
 * The id of a record in the outbox: one per user and call id (the store's
 * idempotency key).
 *
 * @since 0.3.0
 * @category constructors
 */
export const entryId = (input: Pick<TokenStore.RecordInput, "userId" | "callId">): string =>
  JSON.stringify([input.userId, input.callId])

/**
 * The size of an entry as the outbox counts it against `maxBytes`: its
 * record's JSON text in UTF-8.
 *
 * @since 0.3.0
 * @category getters
 */
export const sizeOf = (entry: Entry): number => utf8.encode(JSON.stringify(entry.input)).length

const utf8 = new TextEncoder()

// -----------------------------------------------------------------------------
// Metrics
// -----------------------------------------------------------------------------

/**
 * @since 0.3.0
 * @category metrics
 */
export const pendingGauge = Metric.gauge("token_outbox_pending", {
  description: "Usage records waiting in the outbox for the token store"
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const bytesGauge = Metric.gauge("token_outbox_bytes", {
  description: "Bytes of the usage records waiting in the outbox"
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const oldestAgeGauge = Metric.gauge("token_outbox_oldest_age_seconds", {
  description: "Age of the oldest usage record waiting in the outbox"
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const writtenTotal = Metric.counter("token_outbox_written_total", {
  description: "Usage records the outbox wrote to the token store",
  incremental: true
})

/**
 * By `reason`: `full` (refused, the outbox was full), `expired` (older than
 * the outbox's maximum age), `rejected` (the store refused it for good).
 *
 * @since 0.3.0
 * @category metrics
 */
export const droppedTotal = Metric.counter("token_outbox_dropped_total", {
  description: "Usage records the outbox could not write, by reason",
  incremental: true
})

const reasons = {
  full: [MetricLabel.make("reason", "full")],
  expired: [MetricLabel.make("reason", "expired")],
  rejected: [MetricLabel.make("reason", "rejected")]
} as const

// -----------------------------------------------------------------------------
// Service
// -----------------------------------------------------------------------------

/**
 * What the outbox holds and did.
 *
 * @since 0.3.0
 * @category models
 */
export interface Stats {
  readonly pending: number
  readonly bytes: number
  /** Age of the oldest pending record, ms (0 when none). */
  readonly oldestAgeMillis: number
  readonly written: number
  /** Refused because the outbox was full. */
  readonly dropped: number
  /** Given up after `maxAge`. */
  readonly expired: number
  /** Refused for good by the store (invalid). */
  readonly rejected: number
  readonly durable: boolean
}

/**
 * @since 0.3.0
 * @category models
 */
export declare namespace Outbox {
  /**
   * @since 0.3.0
   * @category models
   */
  export interface Service {
    readonly stats: Effect.Effect<Stats>
    /** Waits until nothing is pending (the store took everything). Unbounded: bound it with a timeout. */
    readonly flush: Effect.Effect<void>
  }
}

/**
 * @since 0.3.0
 * @category tags
 */
export class Outbox extends Context.Tag("effect-llm-callbacks/Outbox")<Outbox, Outbox.Service>() {}

/**
 * Options of the outbox.
 *
 * @since 0.3.0
 * @category models
 */
export interface Options {
  /** Most records held; default 100,000. */
  readonly maxRecords?: number | undefined
  /** Most bytes held (the records' JSON); default 64 MiB. */
  readonly maxBytes?: number | undefined
  /** A record older than this is given up; default 23 hours. At most the store's idempotency window. */
  readonly maxAge?: Duration.DurationInput | undefined
  /** Pause between rounds that made no progress; default exponential from 100 ms, at most 10 s. */
  readonly retry?: Schedule.Schedule<unknown, unknown> | undefined
  /** Records written to the store at once; default 256. */
  readonly batchSize?: number | undefined
  /**
   * Bound on the last attempt to write what is pending when the layer closes
   * (real time); default 5 seconds. A durable outbox stops sooner, at the
   * first round the store takes nothing from (its storage keeps the rest).
   */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /** Bound on one attempt of the outbox to write a record (a store that hangs does not stall it); default 5 seconds. */
  readonly attemptTimeout?: Duration.DurationInput | undefined
  /**
   * Durable storage only: how often an outbox with nothing pending reads its
   * storage again for records another process left there (two processes on
   * one file, as in a rolling restart), which it then writes; default 1
   * minute. It also reads it each time it has written all it had pending.
   *
   * @since 0.4.0
   */
  readonly rescanInterval?: Duration.DurationInput | undefined
}

const invalid = (name: string, message: string) => ConfigError.InvalidData([name], message)

const describe = (input: TokenStore.RecordInput) => ({
  userId: input.userId,
  cycle: input.cycle,
  callId: input.callId,
  promptTokens: input.usage.promptTokens,
  completionTokens: input.usage.completionTokens,
  totalTokens: input.usage.totalTokens
})

/**
 * Builds the outbox over the `TokenStore` and the `OutboxStorage` in
 * context: the store to use instead (records that cannot be written now are
 * queued) and the outbox's service. Records left in the storage by a previous
 * run are replayed at once.
 *
 * @since 0.3.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): Effect.Effect<
  { readonly store: TokenStore.Service; readonly outbox: Outbox.Service },
  ConfigError.ConfigError | OutboxError,
  TokenStore.TokenStore | OutboxStorage | Scope.Scope
> =>
  Effect.gen(function*() {
    const inner = yield* TokenStore.TokenStore
    const storage = yield* OutboxStorage
    const maxRecords = options.maxRecords ?? 100_000
    const maxBytes = options.maxBytes ?? 64 * 1024 * 1024
    const batchSize = options.batchSize ?? 256
    if (!Number.isSafeInteger(maxRecords) || maxRecords < 1) {
      return yield* Effect.fail(invalid("maxRecords", `Expected an integer >= 1, got ${String(maxRecords)}`))
    }
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
      return yield* Effect.fail(invalid("maxBytes", `Expected an integer >= 1, got ${String(maxBytes)}`))
    }
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.fail(invalid("batchSize", `Expected an integer >= 1, got ${String(batchSize)}`))
    }
    const maxAge = Duration.decodeUnknown(options.maxAge ?? Duration.hours(23))
    if (Option.isNone(maxAge) || !Duration.isFinite(maxAge.value) || Duration.toMillis(maxAge.value) <= 0) {
      return yield* Effect.fail(invalid("maxAge", `Expected a finite, positive duration, got ${String(options.maxAge)}`))
    }
    const maxAgeMillis = Duration.toMillis(maxAge.value)
    if (maxAgeMillis > inner.idempotencyWindowMillis) {
      return yield* Effect.fail(
        invalid(
          "maxAge",
          `${Duration.format(maxAge.value)} is longer than the token store's idempotency window ` +
            `(${Duration.format(Duration.millis(inner.idempotencyWindowMillis))}): a record replayed after the ` +
            `window could count twice. Shorten maxAge or lengthen the store's window.`
        )
      )
    }
    const rescanInterval = Duration.decodeUnknown(options.rescanInterval ?? Duration.minutes(1))
    if (Option.isNone(rescanInterval) || Duration.toMillis(rescanInterval.value) <= 0) {
      return yield* Effect.fail(
        invalid("rescanInterval", `Expected a positive duration, got ${String(options.rescanInterval)}`)
      )
    }
    const clock = yield* Effect.clock
    const attemptTimeout = options.attemptTimeout ?? Duration.seconds(5)
    const attempt = (input: TokenStore.RecordInput) =>
      inner.record(input).pipe(
        Effect.timeoutFail({
          duration: attemptTimeout,
          onTimeout: () =>
            new TokenStore.TokenStoreError({
              reason: "Timeout",
              message: `Outbox: the store did not answer within ${Duration.format(Duration.decode(attemptTimeout))}`
            })
        })
      )
    const pending = new Map<string, Entry & { readonly bytes: number }>()
    let bytes = 0
    const counts = { written: 0, dropped: 0, expired: 0, rejected: 0 }
    const wakeup = yield* Queue.sliding<void>(1)
    const idle: Array<() => void> = []

    const gauges = () => {
      pendingGauge.unsafeUpdate(pending.size, [])
      bytesGauge.unsafeUpdate(bytes, [])
      const oldest = pending.values().next()
      oldestAgeGauge.unsafeUpdate(
        oldest.done ? 0 : (clock.unsafeCurrentTimeMillis() - oldest.value.enqueuedAt) / 1000,
        []
      )
      if (pending.size === 0) for (const f of idle.splice(0)) f()
    }
    const hold = (entry: Entry) => {
      if (pending.has(entry.id)) return
      const size = sizeOf(entry)
      pending.set(entry.id, { ...entry, bytes: size })
      bytes += size
    }
    // Removed from the storage before they stop being pending (a flush, or the layer's close, waits for it),
    // and not cut short: a removal that did not happen replays written records at the next start.
    const drop = (ids: ReadonlyArray<string>) =>
      storage.remove(ids).pipe(
        Effect.ensuring(Effect.sync(() => {
          for (const id of ids) {
            const entry = pending.get(id)
            if (entry === undefined) continue
            pending.delete(id)
            bytes -= entry.bytes
          }
          gauges()
        })),
        Effect.uninterruptible
      )

    // Left by a previous run (durable storage): replayed from now on.
    for (const entry of yield* storage.load) hold(entry)
    if (pending.size > 0) {
      yield* Effect.logInfo(`Outbox: ${pending.size} usage records left by a previous run will be replayed`)
    }
    gauges()

    /** Writes entries that fit to the storage (several in one write: `Storage.appendAll`), then holds them. */
    const keep = (entries: ReadonlyArray<Entry>): Effect.Effect<void, TokenStore.TokenStoreError> =>
      (entries.length === 1 || storage.appendAll === undefined
        ? Effect.forEach(entries, storage.append, { discard: true })
        : storage.appendAll(entries)).pipe(
          Effect.mapError((error) =>
            new TokenStore.TokenStoreError({ reason: "Unavailable", message: `Outbox: ${error.message}`, cause: error })
          ),
          Effect.tap(() =>
            Effect.sync(() => {
              for (const entry of entries) hold(entry)
              gauges()
              Queue.unsafeOffer(wakeup, undefined)
            })
          )
        )

    const enqueue = (input: TokenStore.RecordInput): Effect.Effect<TokenStore.RecordOutcome, TokenStore.TokenStoreError> =>
      Effect.suspend(() => {
        const entry: Entry = { id: entryId(input), input, enqueuedAt: clock.unsafeCurrentTimeMillis() }
        if (pending.has(entry.id)) return Effect.succeed("queued" as const)
        const size = sizeOf(entry)
        if (pending.size + 1 > maxRecords || bytes + size > maxBytes) {
          counts.dropped++
          droppedTotal.unsafeUpdate(1, reasons.full)
          return Effect.logError("Outbox full: a usage record could not be written nor kept").pipe(
            Effect.annotateLogs({ ...describe(input), pending: pending.size, bytes }),
            Effect.zipRight(Effect.fail(
              new TokenStore.TokenStoreError({
                reason: "Unavailable",
                message: `Outbox: the store is unavailable and the outbox is full (${pending.size} records, ${bytes} ` +
                  `bytes); the record of call ${input.callId} (user ${JSON.stringify(input.userId)}, cycle ` +
                  `${input.cycle}, ${input.usage.totalTokens} tokens) was not kept`
              })
            ))
          )
        }
        return Effect.as(keep([entry]), "queued" as const)
      })

    const record = (input: TokenStore.RecordInput): Effect.Effect<TokenStore.RecordOutcome, TokenStore.TokenStoreError> =>
      Effect.uninterruptibleMask((restore) =>
        restore(inner.record(input)).pipe(
          Effect.catchIf((error) => error.transient, () => enqueue(input)),
          // Cut short (the handler's timeout, an interruption): it may or may not have reached the
          // store; the outbox makes sure it does (once: records are idempotent).
          Effect.onInterrupt(() => Effect.ignore(enqueue(input)))
        )
      )

    /**
     * Keeps records the store could not take, in one write to the storage
     * (see `Storage.appendAll`); when they do not all fit, one by one (what
     * does not fit is refused as `enqueue` refuses it).
     */
    const enqueueAll = (
      inputs: ReadonlyArray<TokenStore.RecordInput>
    ): Effect.Effect<ReadonlyArray<TokenStore.RecordOutcome>, TokenStore.TokenStoreError> =>
      Effect.suspend(() => {
        const now = clock.unsafeCurrentTimeMillis()
        const entries = new Map<string, Entry>()
        let size = 0
        for (const input of inputs) {
          const entry: Entry = { id: entryId(input), input, enqueuedAt: now }
          if (pending.has(entry.id) || entries.has(entry.id)) continue
          entries.set(entry.id, entry)
          size += sizeOf(entry)
        }
        const all = Array.from(entries.values())
        if (all.length <= 1 || pending.size + all.length > maxRecords || bytes + size > maxBytes) {
          return Effect.forEach(inputs, enqueue, { concurrency: "unbounded" })
        }
        return Effect.as(keep(all), inputs.map(() => "queued" as const))
      })

    // The store's own batch; when it cannot take it now, the outbox keeps the whole batch at once (a record
    // of it that reached the store counts once: records are idempotent).
    const recordMany = (
      inputs: ReadonlyArray<TokenStore.RecordInput>
    ): Effect.Effect<ReadonlyArray<TokenStore.RecordOutcome>, TokenStore.TokenStoreError> =>
      Effect.uninterruptibleMask((restore) =>
        restore(inner.recordMany(inputs)).pipe(
          Effect.catchIf((error) => error.transient, () => enqueueAll(inputs)),
          Effect.onInterrupt(() => Effect.ignore(enqueueAll(inputs)))
        )
      )

    /** One round: expire what is too old, try the oldest `batchSize`; fails when the store took nothing. */
    const round = Effect.suspend(() => {
      const now = clock.unsafeCurrentTimeMillis()
      const expired: Array<Entry> = []
      const batch: Array<Entry> = []
      // Oldest first (insertion order): the expired ones lead, then the batch.
      for (const entry of pending.values()) {
        if (now - entry.enqueuedAt > maxAgeMillis) expired.push(entry)
        else if (batch.length < batchSize) batch.push(entry)
        else break
      }
      const expire = expired.length === 0 ? Effect.void : Effect.forEach(expired, (entry) =>
        Effect.logError("Outbox: a usage record outlived the outbox's maximum age and is given up").pipe(
          Effect.annotateLogs({ ...describe(entry.input), ageMillis: now - entry.enqueuedAt })
        ), { discard: true }).pipe(
          Effect.zipRight(Effect.sync(() => {
            counts.expired += expired.length
            droppedTotal.unsafeUpdate(expired.length, reasons.expired)
          })),
          Effect.zipRight(drop(expired.map((entry) => entry.id)))
        )
      return Effect.zipRight(
        expire,
        Effect.flatMap(
          Effect.forEach(batch, (entry) => Effect.either(attempt(entry.input)), { concurrency: "unbounded" }),
          (results) => {
            const done: Array<string> = []
            const rejected: Array<Entry> = []
            results.forEach((result, i) => {
              const entry = batch[i]!
              if (Either.isRight(result)) done.push(entry.id)
              else if (!result.left.transient) rejected.push(entry)
            })
            counts.written += done.length
            if (done.length > 0) writtenTotal.unsafeUpdate(done.length, [])
            const reject = rejected.length === 0 ? Effect.void : Effect.forEach(rejected, (entry) =>
              Effect.logError("Outbox: the token store refused a queued usage record for good").pipe(
                Effect.annotateLogs(describe(entry.input))
              ), { discard: true }).pipe(
                Effect.zipRight(Effect.sync(() => {
                  counts.rejected += rejected.length
                  droppedTotal.unsafeUpdate(rejected.length, reasons.rejected)
                }))
              )
            const progressed = done.length + rejected.length > 0 || batch.length === 0
            return Effect.zipRight(
              Effect.zipRight(reject, drop([...done, ...rejected.map((entry) => entry.id)])),
              progressed ? Effect.void : Effect.fail("no progress" as const)
            )
          }
        )
      )
    })

    // Another process on the same durable storage (a rolling restart: the old process stops after the
    // new one has loaded the storage) may leave records there that no process holds: read it again, and
    // hold what is not held (a record the other process also writes counts once: records are idempotent).
    const rescan = Effect.suspend(() => {
      if (!storage.durable) return Effect.void
      return storage.load.pipe(
        Effect.flatMap((entries) => {
          let found = 0
          for (const entry of entries) {
            if (pending.has(entry.id)) continue
            hold(entry)
            found++
          }
          if (found === 0) return Effect.void
          gauges()
          return Effect.logInfo(`Outbox: ${found} usage records found in its storage, left by another process, will be written`)
        }),
        Effect.catchAll((error) => Effect.logWarning("Outbox: cannot read its storage again", error.message))
      )
    })
    // Idle: woken by a record queued; with durable storage, also every `rescanInterval`, to rescan.
    const idleWait = storage.durable
      ? Effect.flatMap(
        Effect.timeoutOption(Queue.take(wakeup), rescanInterval.value),
        (woken) => Option.isSome(woken) ? Effect.void : rescan
      )
      : Queue.take(wakeup)

    const schedule = options.retry ??
      Schedule.exponential("100 millis").pipe(Schedule.either(Schedule.spaced("10 seconds")))
    // Rounds while records are pending; a round the store took nothing from is retried on the schedule.
    // Once all is written, the storage is read again (see `rescan`).
    const writer = Effect.forever(
      Effect.suspend(() =>
        pending.size === 0
          ? idleWait
          : Effect.retry(round, schedule).pipe(
            Effect.zipRight(Effect.suspend(() => pending.size === 0 ? rescan : Effect.void)),
            Effect.catchAllCause((cause) =>
              Cause.isInterruptedOnly(cause)
                ? Effect.failCause(cause as Cause.Cause<never>)
                : Effect.logError("Outbox: a round failed", cause)
            )
          )
      )
    )
    const writing = yield* Effect.forkScoped(Effect.interruptible(writer))

    const shutdownTimeout = options.shutdownTimeout ?? Duration.seconds(5)
    const flush = Effect.async<void>((resume) => {
      if (pending.size === 0) return resume(Effect.void)
      idle.push(() => resume(Effect.void))
    })
    // Closing: one last effort, bounded; what is left stays in durable storage, or is lost (and said so).
    // The writer stops first (its round, cut short, is tried again here: records are idempotent). A durable
    // outbox stops at the first round the store takes nothing from: what is left is safe in its storage, and
    // retrying a store that refuses would only hold the process up for `shutdownTimeout`. An outbox in memory
    // goes on trying until `shutdownTimeout`: what it does not write is lost.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        if (pending.size === 0) return Fiber.interrupt(writing)
        let refused = false
        const drain = Effect.whileLoop({
          while: () => pending.size > 0 && !refused,
          body: () =>
            Effect.catchAll(round, () => {
              if (!storage.durable) return Effect.sleep("50 millis")
              refused = true
              return Effect.void
            }),
          step: () => undefined
        })
        // Bounded in real time: under a TestClock nobody moves, the close must not hang.
        return Fiber.interrupt(writing).pipe(
          Effect.zipRight(Effect.interruptible(drain)),
          Effect.timeoutOption(shutdownTimeout),
          Effect.withClock(liveClock),
          Effect.zipRight(Effect.suspend(() =>
            pending.size === 0
              ? Effect.void
              : storage.durable
              ? Effect.logWarning(
                `Outbox: ${pending.size} usage records kept in the durable outbox; the next start replays them`
              )
              : Effect.logError(
                `Outbox: ${pending.size} usage records could not be written and are lost (the outbox is in memory)`
              ).pipe(Effect.annotateLogs({ records: Array.from(pending.values(), (entry) => describe(entry.input)) }))
          ))
        )
      })
    )

    const store: TokenStore.Service = {
      ...inner,
      record,
      recordMany
    }
    const outbox: Outbox.Service = {
      stats: Effect.sync((): Stats => {
        const oldest = pending.values().next()
        return {
          pending: pending.size,
          bytes,
          oldestAgeMillis: oldest.done ? 0 : clock.unsafeCurrentTimeMillis() - oldest.value.enqueuedAt,
          written: counts.written,
          dropped: counts.dropped,
          expired: counts.expired,
          rejected: counts.rejected,
          durable: storage.durable
        }
      }),
      flush
    }
    return { store, outbox }
  })

/**
 * The outbox in front of the `TokenStore` in context: provides that store
 * (with records that cannot be written now queued) and the `Outbox` service.
 * Needs an `OutboxStorage` (`layerStorageMemory`, or `layers/SqlOutbox`).
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Outbox } from "effect-llm-callbacks"
 * import * as RedisTokenStore from "effect-llm-callbacks/layers/RedisTokenStore"
 * import * as SqlOutbox from "effect-llm-callbacks/layers/SqlOutbox"
 *
 * const Store = Outbox.layer({ maxAge: "12 hours" }).pipe(
 *   Layer.provide(RedisTokenStore.layerConfig()),
 *   Layer.provide(SqlOutbox.layerSqlite({ filename: "/var/lib/my-app/outbox.db" }))
 * )
 * ```
 *
 * @since 0.3.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<TokenStore.TokenStore | Outbox, ConfigError.ConfigError | OutboxError, TokenStore.TokenStore | OutboxStorage> =>
  Layer.scopedContext(
    Effect.map(make(options), ({ outbox, store }) =>
      Context.make(TokenStore.TokenStore, store).pipe(Context.add(Outbox, outbox)))
  )

/**
 * The outbox's stats.
 *
 * @since 0.3.0
 * @category accessors
 */
export const stats: Effect.Effect<Stats, never, Outbox> = Effect.flatMap(Outbox, (outbox) => outbox.stats)

/**
 * Waits until the outbox is empty.
 *
 * @since 0.3.0
 * @category accessors
 */
export const flush: Effect.Effect<void, never, Outbox> = Effect.flatMap(Outbox, (outbox) => outbox.flush)
