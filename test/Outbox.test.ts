import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, HashMap, Layer, Logger, Schedule, Scope, TestClock } from "effect"
import { postgresClient, skipWithoutPostgres } from "./support/postgres.js"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqlOutbox from "../layers/SqlOutbox.js"
import { Dispatcher, Outbox, TokenStore } from "../src/index.js"

const cycle = "2026-12-01"

const usage = (n: number) => ({ promptTokens: n, completionTokens: 1, totalTokens: n + 1 })

/**
 * A memory store behind a switch: `down` refuses records (Unavailable) without writing them; `lossy`
 * writes them and loses the reply (Timeout), as a connection reset after the script ran does.
 */
const switchable = Effect.gen(function*() {
  const memory = yield* TokenStore.makeMemory()
  const state = { down: false, lossy: false, attempts: 0 }
  const fail = (reason: "Unavailable" | "Timeout") =>
    Effect.fail(new TokenStore.TokenStoreError({ reason, message: `store ${reason}` }))
  /** One request through the switch: `write` is the memory store's. */
  const switched = <A>(write: Effect.Effect<A, TokenStore.TokenStoreError>) =>
    Effect.suspend(() => {
      state.attempts++
      if (state.down) return fail("Unavailable")
      if (state.lossy) return Effect.zipRight(write, fail("Timeout"))
      return write
    })
  const store: TokenStore.Service = {
    ...memory,
    record: (input) => switched(memory.record(input)),
    recordMany: (inputs) => switched(memory.recordMany(inputs))
  }
  return { store, memory, state }
})

/** A durable outbox storage, empty: a SQLite file in a directory of its own (removed with the scope), or PostgreSQL. */
type Durable = Effect.Effect<Layer.Layer<Outbox.OutboxStorage, unknown>, unknown, Scope.Scope>

const sqliteFile: Durable = Effect.map(
  Effect.acquireRelease(
    Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "outbox-"))),
    (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
  ),
  (dir) => SqlOutbox.layerSqlite({ filename: path.join(dir, "outbox.db") })
)

/** The outbox table in the run's PostgreSQL database (created, then emptied). */
const postgresTable: Durable = Effect.gen(function*() {
  const storage = SqlOutbox.layer.pipe(Layer.provide(postgresClient))
  yield* Effect.scoped(Layer.build(storage))
  yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM effect_llm_callbacks_outbox`).pipe(
    Effect.provide(postgresClient)
  )
  return storage
})

/** The switchable store, down, and a durable outbox storage. */
const downWithDurableOutbox = (durable: Durable) =>
  Effect.gen(function*() {
    const storage = yield* durable
    const switched = yield* switchable
    switched.state.down = true
    return { ...switched, storage }
  })

const withOutbox = <E>(
  store: TokenStore.Service,
  options: Outbox.Options = {},
  storage: Layer.Layer<Outbox.OutboxStorage, E> = Outbox.layerStorageMemory as Layer.Layer<Outbox.OutboxStorage, E>
) =>
  Outbox.layer({ retry: Schedule.spaced("100 millis"), ...options }).pipe(
    Layer.provide(Layer.merge(Layer.succeed(TokenStore.TokenStore, store), storage))
  )

const capture = () => {
  const lines: Array<{ readonly message: string; readonly annotations: Record<string, unknown> }> = []
  const layer = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ annotations, message }) => {
      lines.push({
        message: Array.isArray(message) ? message.join(" ") : String(message),
        annotations: Object.fromEntries(HashMap.toEntries(annotations))
      })
    })
  )
  return { lines, layer }
}

describe("Outbox", () => {
  it.effect("a record the store cannot take now is queued, then written once the store is back", () =>
    Effect.gen(function*() {
      const { memory, state, store } = yield* switchable
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        state.down = true
        const outcomes = yield* Effect.forEach([1, 2, 3], (n) =>
          wrapped.record({ callId: `c${n}`, userId: "alice", cycle, usage: usage(n) }))
        assert.deepStrictEqual(outcomes, ["queued", "queued", "queued"])
        assert.deepInclude(yield* Outbox.stats, { pending: 3, written: 0 })
        assert.strictEqual((yield* memory.stats("alice", cycle)).totalTokens, 0)
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Outbox.stats).pending, 3)
        state.down = false
        yield* TestClock.adjust("1 second")
        assert.deepInclude(yield* Outbox.stats, { pending: 0, written: 3 })
        assert.strictEqual((yield* memory.stats("alice", cycle)).totalTokens, 2 + 3 + 4)
        // Written: the store's answers pass through again.
        assert.strictEqual(yield* wrapped.record({ callId: "c9", userId: "alice", cycle, usage: usage(1) }), "recorded")
      }).pipe(Effect.provide(withOutbox(store)))
    }))

  it.effect("Dispatcher.health shows the outbox, degraded while records wait in it", () =>
    Effect.gen(function*() {
      const { state, store } = yield* switchable
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        assert.deepInclude(yield* Dispatcher.health, { status: "healthy" })
        assert.deepInclude((yield* Dispatcher.health).outbox, { pending: 0, written: 0 })
        state.down = true
        yield* wrapped.record({ callId: "h1", userId: "alice", cycle, usage: usage(5) })
        yield* TestClock.adjust("10 seconds")
        const down = yield* Dispatcher.health
        assert.strictEqual(down.status, "degraded")
        assert.deepInclude(down.outbox, { pending: 1, oldestAgeMillis: 10_000 })
        state.down = false
        yield* TestClock.adjust("1 second")
        const back = yield* Dispatcher.health
        assert.strictEqual(back.status, "healthy")
        assert.deepInclude(back.outbox, { pending: 0, written: 1 })
      }).pipe(Effect.provide(Layer.merge(withOutbox(store), Dispatcher.layer())))
      // Without an outbox in context, the report has none.
      assert.isUndefined((yield* Effect.provide(Dispatcher.health, Dispatcher.layer())).outbox)
    }))

  it.effect("2,000 concurrent records while the store goes down, loses replies and comes back: every one counted once", () =>
    Effect.gen(function*() {
      const { memory, state, store } = yield* switchable
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        const records = Array.from({ length: 2_000 }, (_, i) => ({
          callId: `c${i}`,
          userId: `u${i % 7}`,
          cycle,
          usage: usage(i % 50)
        }))
        const fiber = yield* Effect.fork(Effect.forEach(records, (record, i) =>
          Effect.zipRight(
            Effect.sync(() => {
              // The store's weather changes as the records come.
              state.down = Math.floor(i / 300) % 3 === 1
              state.lossy = Math.floor(i / 200) % 4 === 2
            }),
            wrapped.record(record)
          ), { concurrency: 64 }))
        const outcomes = yield* Fiber.join(fiber)
        assert.isTrue(outcomes.includes("queued"))
        state.down = false
        state.lossy = false
        yield* TestClock.adjust("10 seconds")
        yield* Outbox.flush
        const stats = yield* Outbox.stats
        assert.deepInclude(stats, { pending: 0, dropped: 0, expired: 0, rejected: 0 })
        for (let u = 0; u < 7; u++) {
          const expected = records.filter((r) => r.userId === `u${u}`).reduce((n, r) => n + r.usage.totalTokens, 0)
          assert.strictEqual((yield* memory.stats(`u${u}`, cycle)).totalTokens, expected)
        }
      }).pipe(Effect.provide(withOutbox(store, { batchSize: 64 })))
    }))

  it.effect("a batch the store cannot take now is kept whole, in one write to the storage; then written once each", () =>
    Effect.gen(function*() {
      const { memory, state, store } = yield* switchable
      state.down = true
      const writes = { one: 0, all: 0 }
      const counting = Layer.succeed(Outbox.OutboxStorage, {
        durable: false,
        load: Effect.succeed([]),
        append: () => Effect.sync(() => void writes.one++),
        appendAll: () => Effect.sync(() => void writes.all++),
        remove: () => Effect.void
      })
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        const batch = Array.from({ length: 100 }, (_, i) => ({ callId: `b${i}`, userId: `u${i % 7}`, cycle, usage: usage(i) }))
        const outcomes = yield* wrapped.recordMany(batch)
        assert.deepStrictEqual(new Set(outcomes), new Set(["queued"]))
        assert.deepStrictEqual(writes, { one: 0, all: 1 })
        assert.strictEqual((yield* Outbox.stats).pending, 100)
        // The same batch again (a handler's retry): nothing more is kept.
        yield* wrapped.recordMany(batch)
        assert.strictEqual((yield* Outbox.stats).pending, 100)
        state.down = false
        yield* TestClock.adjust("1 second")
        yield* Outbox.flush
        let total = 0
        for (let u = 0; u < 7; u++) total += (yield* memory.stats(`u${u}`, cycle)).totalTokens
        assert.strictEqual(total, batch.reduce((n, input) => n + input.usage.totalTokens, 0))
      }).pipe(Effect.provide(withOutbox(store, {}, counting)))
    }))

  it.effect("durable storage: an outbox with nothing pending reads it again every rescanInterval, and writes what another process left", () =>
    Effect.gen(function*() {
      const { memory, store } = yield* switchable
      // A durable storage shared with another process (kept here in a map).
      const rows = new Map<string, Outbox.Entry>()
      const shared = Layer.succeed(Outbox.OutboxStorage, {
        durable: true,
        load: Effect.sync(() => Array.from(rows.values())),
        append: (entry) => Effect.sync(() => void rows.set(entry.id, entry)),
        remove: (ids) => Effect.sync(() => ids.forEach((id) => rows.delete(id)))
      })
      yield* Effect.gen(function*() {
        // After this outbox started, another process leaves 5 records there.
        for (let i = 0; i < 5; i++) {
          const input = { callId: `left${i}`, userId: "ivy", cycle, usage: usage(i) }
          rows.set(Outbox.entryId(input), { id: Outbox.entryId(input), input, enqueuedAt: 0 })
        }
        yield* TestClock.adjust("59 seconds")
        assert.strictEqual((yield* memory.stats("ivy", cycle)).totalTokens, 0)
        assert.strictEqual(rows.size, 5)
        // Its next read of the storage finds them: written, once each, and gone from the storage.
        yield* TestClock.adjust("1 second")
        yield* Outbox.flush
        assert.strictEqual((yield* memory.stats("ivy", cycle)).totalTokens, 15)
        assert.strictEqual(rows.size, 0)
        assert.strictEqual((yield* Outbox.stats).written, 5)
      }).pipe(Effect.provide(withOutbox(store, { rescanInterval: "1 minute", maxAge: "23 hours" }, shared)))
    }))

  it.effect("full: a record that does not fit is refused, counted and logged with its user, cycle and tokens", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      const { state, store } = yield* switchable
      state.down = true
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        for (const n of [1, 2]) yield* wrapped.record({ callId: `c${n}`, userId: "bob", cycle, usage: usage(n) })
        const refused = yield* Effect.exit(wrapped.record({ callId: "c3", userId: "bob", cycle, usage: usage(40) }))
        assert.isTrue(Exit.isFailure(refused))
        assert.deepInclude(yield* Outbox.stats, { pending: 2, dropped: 1 })
        const line = lines.find((l) => l.message.includes("Outbox full"))!
        assert.deepInclude(line.annotations, { userId: "bob", cycle, callId: "c3", totalTokens: 41 })
      }).pipe(Effect.provide(withOutbox(store, { maxRecords: 2, shutdownTimeout: "100 millis" })))
    }).pipe(Effect.provide(layer))
  })

  it.effect("a record older than maxAge is given up, counted and logged; a maxAge past the store's window is refused", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      const { state, store } = yield* switchable
      state.down = true
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        yield* wrapped.record({ callId: "old", userId: "carol", cycle, usage: usage(5) })
        yield* TestClock.adjust("2 minutes")
        assert.deepInclude(yield* Outbox.stats, { pending: 0, expired: 1 })
        assert.deepInclude(lines.find((l) => l.message.includes("maximum age"))!.annotations, {
          userId: "carol",
          callId: "old",
          totalTokens: 6
        })
      }).pipe(Effect.provide(withOutbox(store, { maxAge: "1 minute" })))
      const refused = yield* Effect.exit(Layer.build(withOutbox(store, { maxAge: "25 hours" })).pipe(Effect.scoped))
      assert.isTrue(Exit.isFailure(refused))
      assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "maxAge")
      assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "idempotency window")
    }).pipe(Effect.provide(layer))
  })

  it.effect("an attempt cut short (the handler's timeout) is queued too, and written once", () =>
    Effect.gen(function*() {
      const memory = yield* TokenStore.makeMemory()
      let hang = true
      const store: TokenStore.Service = {
        ...memory,
        record: (input) => Effect.suspend(() => (hang ? Effect.never : memory.record(input)))
      }
      yield* Effect.gen(function*() {
        const wrapped = yield* TokenStore.TokenStore
        const cut = yield* Effect.exit(
          wrapped.record({ callId: "c1", userId: "dan", cycle, usage: usage(7) }).pipe(
            Effect.timeout("1 second"),
            Effect.fork,
            Effect.tap(() => TestClock.adjust("1 second")),
            Effect.flatMap(Fiber.join)
          )
        )
        assert.isTrue(Exit.isFailure(cut))
        assert.strictEqual((yield* Outbox.stats).pending, 1)
        hang = false
        // The outbox's own attempt hung too (5 s bound), then it retried.
        yield* TestClock.adjust("10 seconds")
        assert.strictEqual((yield* memory.stats("dan", cycle)).totalTokens, 8)
      }).pipe(Effect.provide(withOutbox(store)))
    }))

  it.scopedLive("in memory: a close goes on trying until shutdownTimeout (the store back meanwhile takes all); past it, what is left is logged as lost, record by record", () =>
    Effect.gen(function*() {
      const { memory, state, store } = yield* switchable
      const { layer: logs, lines } = capture()
      const queue = (userId: string) =>
        Effect.flatMap(TokenStore.TokenStore, (wrapped) =>
          Effect.forEach([1, 2, 3], (n) => wrapped.record({ callId: `c${n}`, userId, cycle, usage: usage(n) })))
      state.down = true
      // The store comes back once the close has retried (two rounds of the three refused): the close waits
      // for it, and writes the three.
      const scope = yield* Scope.make()
      const run = yield* Layer.buildWithScope(withOutbox(store, { shutdownTimeout: "20 seconds" }), scope)
      yield* Effect.provide(queue("jay"), run)
      const before = state.attempts
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* Effect.sleep("5 millis").pipe(
        Effect.repeat({ until: () => state.attempts >= before + 6 }),
        Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => "the close did not retry" })
      )
      assert.strictEqual((yield* memory.stats("jay", cycle)).totalTokens, 0)
      state.down = false
      yield* Fiber.join(closing)
      assert.strictEqual((yield* memory.stats("jay", cycle)).totalTokens, 2 + 3 + 4)
      // Down throughout: past shutdownTimeout the records are lost, and each is logged with its user and tokens.
      state.down = true
      yield* Effect.provide(queue("kim"), withOutbox(store, { shutdownTimeout: "200 millis" })).pipe(
        Effect.scoped,
        Effect.provide(logs)
      )
      const lost = lines.find((line) => line.message.includes("could not be written and are lost"))
      assert.isDefined(lost)
      assert.include(lost!.message, "3 usage records")
      assert.deepStrictEqual(
        (lost!.annotations["records"] as ReadonlyArray<{ callId: string; userId: string; totalTokens: number }>)
          .map(({ callId, totalTokens, userId }) => ({ callId, userId, totalTokens })),
        [{ callId: "c1", userId: "kim", totalTokens: 2 }, { callId: "c2", userId: "kim", totalTokens: 3 }, {
          callId: "c3",
          userId: "kim",
          totalTokens: 4
        }]
      )
      assert.strictEqual((yield* memory.stats("kim", cycle)).totalTokens, 0)
    }), 30_000)

  for (const [name, durable, skip] of [
    ["SQLite file", sqliteFile, false],
    ["PostgreSQL", postgresTable, skipWithoutPostgres]
  ] as const) {
    describe.skipIf(skip)(name, () => {
    it.scopedLive(`durable (${name}): what is pending at close is kept and replayed by the next start, exactly`, () =>
      Effect.gen(function*() {
        const { memory, state, storage, store } = yield* downWithDurableOutbox(durable)
        // First run: the store is down throughout; records are kept in the file.
        yield* Effect.gen(function*() {
          const wrapped = yield* TokenStore.TokenStore
          yield* Effect.forEach(Array.from({ length: 100 }, (_, i) => i), (i) =>
            wrapped.record({ callId: `c${i}`, userId: "erin", cycle, usage: usage(i) }), { concurrency: 10 })
          assert.deepInclude(yield* Outbox.stats, { pending: 100, durable: true })
        }).pipe(Effect.provide(withOutbox(store, { shutdownTimeout: "200 millis" }, storage)), Effect.scoped)
        assert.strictEqual((yield* memory.stats("erin", cycle)).totalTokens, 0)
        // Second run, the store back: the file's records are replayed, each once.
        state.down = false
        yield* Effect.gen(function*() {
          yield* Outbox.flush.pipe(Effect.timeout("10 seconds"))
          assert.deepInclude(yield* Outbox.stats, { pending: 0, written: 100 })
        }).pipe(Effect.provide(withOutbox(store, {}, storage)), Effect.scoped)
        const expected = Array.from({ length: 100 }, (_, i) => i + 1).reduce((a, b) => a + b, 0)
        assert.strictEqual((yield* memory.stats("erin", cycle)).totalTokens, expected)
        // A third start finds nothing to replay.
        yield* Effect.gen(function*() {
          assert.strictEqual((yield* Outbox.stats).pending, 0)
        }).pipe(Effect.provide(withOutbox(store, {}, storage)), Effect.scoped)
      }))

    it.scopedLive(`durable (${name}): a close while the store refuses makes one attempt, not shutdownTimeout's worth, and keeps every record`, () =>
      Effect.gen(function*() {
        const { memory, state, storage, store } = yield* downWithDurableOutbox(durable)
        // The default shutdownTimeout (5 s): a close that retried until it ran out would try hundreds of times.
        // The writer retries a round the store refused an hour later: it makes one round in this test.
        const scope = yield* Scope.make()
        const run = yield* Layer.buildWithScope(
          withOutbox(store, { batchSize: 16, retry: Schedule.spaced("1 hour") }, storage),
          scope
        )
        yield* Effect.flatMap(TokenStore.TokenStore, (wrapped) =>
          Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) =>
            wrapped.record({ callId: `c${i}`, userId: "ivy", cycle, usage: usage(i) }), { concurrency: 10 })).pipe(
            Effect.provide(run)
          )
        assert.strictEqual((yield* Effect.provide(Outbox.stats, run)).pending, 40)
        const before = state.attempts
        yield* Scope.close(scope, Exit.void)
        // One round of the close: the oldest batch (16), refused; the rest stays in the storage without being
        // tried. Besides, the writer's one round (16) when it had not begun before the stats were read.
        const attempts = state.attempts - before
        assert.isTrue(attempts === 16 || attempts === 32, `attempts during the close: ${attempts}`)
        // Nothing lost: the next start, the store back, writes all 40, each once.
        state.down = false
        yield* Effect.gen(function*() {
          assert.strictEqual((yield* Outbox.stats).pending, 40)
          yield* Outbox.flush.pipe(Effect.timeout("10 seconds"))
        }).pipe(Effect.provide(withOutbox(store, {}, storage)), Effect.scoped)
        assert.strictEqual((yield* memory.stats("ivy", cycle)).totalTokens, Array.from({ length: 40 }, (_, i) => i + 1).reduce((a, b) => a + b, 0))
      }), 30_000)

    it.scopedLive(`durable (${name}), two runs on one storage at once (a rolling restart): what the old run leaves there is written by the new one`, () =>
      Effect.gen(function*() {
        const { memory, state, storage, store } = yield* downWithDurableOutbox(durable)
        const record = (from: number, to: number, userId: string) =>
          Effect.flatMap(TokenStore.TokenStore, (wrapped) =>
            Effect.forEach(Array.from({ length: to - from }, (_, k) => from + k), (i) =>
              wrapped.record({ callId: `c${i}`, userId, cycle, usage: usage(i) }), { concurrency: 10 }))
        const sum = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => from + k + 1).reduce((a, b) => a + b, 0)
        const eventually = (userId: string, total: number) =>
          memory.stats(userId, cycle).pipe(
            Effect.filterOrFail((stats) => stats.totalTokens === total, (stats) => `${userId}: ${stats.totalTokens} of ${total}`),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(250))))
          )

        for (const [userId, ownRecords] of [["gus", true], ["hal", false]] as const) {
          state.down = true
          // The old run, the store down: its records go to the file.
          const oldScope = yield* Scope.make()
          const oldRun = yield* Layer.buildWithScope(withOutbox(store, { shutdownTimeout: "100 millis" }, storage), oldScope)
          yield* Effect.provide(record(0, 20, userId), oldRun)
          // The new run starts and finds those 20; the old one goes on, then stops with 30 more in the file.
          const newScope = yield* Scope.make()
          const newRun = yield* Layer.buildWithScope(withOutbox(store, { rescanInterval: "300 millis" }, storage), newScope)
          assert.strictEqual((yield* Effect.provide(Outbox.stats, newRun)).pending, 20)
          yield* Effect.provide(record(20, 50, userId), oldRun)
          yield* Scope.close(oldScope, Exit.void)
          // With records of its own pending (written, it reads the file again), or with none (it reads the file
          // again every rescanInterval): the new run writes all 70 (or 50), each once, without another start.
          if (ownRecords) yield* Effect.provide(record(50, 70, userId), newRun)
          state.down = false
          yield* eventually(userId, sum(0, ownRecords ? 70 : 50))
          yield* Effect.provide(Outbox.flush, newRun)
          yield* Scope.close(newScope, Exit.void)
          // Nothing is left in the file.
          yield* Effect.gen(function*() {
            assert.strictEqual((yield* Outbox.stats).pending, 0)
          }).pipe(Effect.provide(withOutbox(store, {}, storage)), Effect.scoped)
          assert.strictEqual((yield* memory.stats(userId, cycle)).totalTokens, sum(0, ownRecords ? 70 : 50))
        }
        // A bad interval is refused when the layer is built, named with its value.
        const refused = yield* Effect.exit(Layer.build(withOutbox(store, { rescanInterval: "0 millis" }, storage)).pipe(Effect.scoped))
        assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "rescanInterval")
        assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "0 millis")
      }), 30_000)
    })
  }
})
