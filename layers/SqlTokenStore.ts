/**
 * The token store on `@effect/sql`: PostgreSQL (`@effect/sql-pg`) or SQLite
 * (`@effect/sql-sqlite-node`), with a ledger of one row per recorded call,
 * the billing source of truth.
 *
 * Tables (created by `@effect/sql`'s Migrator, its own migrations table
 * `effect_llm_callbacks_token_store_migrations`):
 *
 * - `effect_llm_callbacks_ledger`: one row per user and call id (the primary
 *   key): cycle, team, organisation, provider, model, prompt, completion,
 *   total, cached, cache-write and reasoning tokens, cost in micro-units, the
 *   estimated flag (0 / 1) and `recorded_at` (epoch ms, Effect's `Clock`).
 *   Rows are never deleted: a call id is remembered for ever, so a record
 *   replayed at any age (an outbox, a retry after a lost reply) counts once
 *   (`idempotencyWindowMillis` is unbounded).
 * - `effect_llm_callbacks_accounts`: the counters and limit of each subject
 *   (user, team, organisation) and cycle, moved in the same transaction as
 *   the ledger row.
 * - `effect_llm_callbacks_holds`, `effect_llm_callbacks_rate_windows`: budget
 *   reservations and one-minute rate windows (see `TokenStore.reserve`).
 *
 * Every operation is one transaction; records issued in the same event-loop
 * turn (up to `batchSize`) share one, each keeping its own outcome, and so do
 * reservations (decided one after the other, as if alone).
 * Concurrent writers of one subject
 * (several processes on one database) are serialized by row locks in
 * PostgreSQL, taken in one order (organisation, team, user) by every
 * operation, and by SQLite's write lock; a transaction that meets a deadlock,
 * a serialization failure or a busy SQLite file is run again (at most
 * `contentionRetries` times). A database that cannot be reached fails with
 * reason `Unavailable` (an `Outbox` in front keeps such records and retries
 * them), and so does one that refuses for a reason an operator fixes (rights
 * revoked, a password or role refused, a full disk, a SQLite file that cannot
 * be written); an operation past `timeout` fails with `Timeout`.
 *
 * Time (hold expiry, rate windows, `recorded_at`) is Effect's `Clock`, not the
 * database's, as in the other stores.
 *
 * @since 0.3.0
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import { opened } from "../src/internal/sqliteFile.js"
import * as TokenStore from "../src/TokenStore.js"

// -----------------------------------------------------------------------------
// Schema
// -----------------------------------------------------------------------------

/** The counters' columns, in the order of `TokenStore.counters`. */
const counterColumns = TokenStore.counterFields

const migrations = Migrator.fromRecord({
  "0001_create_token_store": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS effect_llm_callbacks_ledger (
      user_id TEXT NOT NULL,
      call_id TEXT NOT NULL,
      cycle TEXT NOT NULL,
      team_id TEXT,
      org_id TEXT,
      provider TEXT,
      model TEXT,
      prompt_tokens BIGINT NOT NULL,
      completion_tokens BIGINT NOT NULL,
      total_tokens BIGINT NOT NULL,
      cached_tokens BIGINT NOT NULL,
      cache_write_tokens BIGINT NOT NULL,
      reasoning_tokens BIGINT NOT NULL,
      cost_micros BIGINT NOT NULL,
      estimated SMALLINT NOT NULL,
      recorded_at BIGINT NOT NULL,
      PRIMARY KEY (user_id, call_id)
    )`
    yield* sql`CREATE INDEX IF NOT EXISTS effect_llm_callbacks_ledger_cycle
      ON effect_llm_callbacks_ledger (cycle, user_id, recorded_at)`
    yield* sql`CREATE TABLE IF NOT EXISTS effect_llm_callbacks_accounts (
      cycle TEXT NOT NULL,
      level TEXT NOT NULL,
      subject_id TEXT NOT NULL,
      prompt_tokens BIGINT NOT NULL DEFAULT 0,
      completion_tokens BIGINT NOT NULL DEFAULT 0,
      total_tokens BIGINT NOT NULL DEFAULT 0,
      cost_micros BIGINT NOT NULL DEFAULT 0,
      cached_tokens BIGINT NOT NULL DEFAULT 0,
      cache_write_tokens BIGINT NOT NULL DEFAULT 0,
      reasoning_tokens BIGINT NOT NULL DEFAULT 0,
      estimated_tokens BIGINT NOT NULL DEFAULT 0,
      token_limit BIGINT,
      fresh SMALLINT NOT NULL DEFAULT 0,
      PRIMARY KEY (cycle, level, subject_id)
    )`
    yield* sql`CREATE TABLE IF NOT EXISTS effect_llm_callbacks_holds (
      cycle TEXT NOT NULL,
      level TEXT NOT NULL,
      subject_id TEXT NOT NULL,
      call_id TEXT NOT NULL,
      tokens BIGINT NOT NULL,
      expires_at BIGINT NOT NULL,
      PRIMARY KEY (cycle, level, subject_id, call_id)
    )`
    yield* sql`CREATE TABLE IF NOT EXISTS effect_llm_callbacks_rate_windows (
      level TEXT NOT NULL,
      subject_id TEXT NOT NULL,
      window_start BIGINT NOT NULL,
      requests BIGINT NOT NULL,
      tokens BIGINT NOT NULL,
      PRIMARY KEY (level, subject_id)
    )`
  })
})

/**
 * Creates the tables (once per database; concurrent starts are safe: the
 * Migrator locks its table).
 *
 * @since 0.3.0
 * @category migrations
 */
export const migrate: Effect.Effect<void, Migrator.MigrationError | SqlError.SqlError, SqlClient.SqlClient> = Effect
  .asVoid(
    Migrator.make({})({ loader: migrations, table: "effect_llm_callbacks_token_store_migrations" })
  )

// -----------------------------------------------------------------------------
// Ledger
// -----------------------------------------------------------------------------

/**
 * One recorded call, as the ledger holds it.
 *
 * @since 0.3.0
 * @category models
 */
export interface LedgerRow {
  readonly callId: string
  readonly userId: string
  readonly cycle: string
  readonly teamId: string | undefined
  readonly orgId: string | undefined
  readonly provider: string | undefined
  readonly model: string | undefined
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  readonly cachedTokens: number
  readonly cacheWriteTokens: number
  readonly reasoningTokens: number
  readonly costMicros: number
  readonly estimated: boolean
  /** When it was recorded, epoch ms. */
  readonly recordedAt: number
}

/**
 * Which ledger rows to read: a cycle, optionally one user, at most `limit`
 * rows (oldest first).
 *
 * @since 0.3.0
 * @category models
 */
export interface LedgerQuery {
  readonly cycle: string
  readonly userId?: string | undefined
  readonly limit?: number | undefined
}

interface RawLedgerRow {
  readonly call_id: string
  readonly user_id: string
  readonly cycle: string
  readonly team_id: string | null
  readonly org_id: string | null
  readonly provider: string | null
  readonly model: string | null
  readonly prompt_tokens: number | string | bigint
  readonly completion_tokens: number | string | bigint
  readonly total_tokens: number | string | bigint
  readonly cached_tokens: number | string | bigint
  readonly cache_write_tokens: number | string | bigint
  readonly reasoning_tokens: number | string | bigint
  readonly cost_micros: number | string | bigint
  readonly estimated: number | string | bigint
  readonly recorded_at: number | string | bigint
}

// PostgreSQL returns BIGINT and SUM as strings; every stored value is a safe integer.
const num = (u: unknown): number => u === null || u === undefined ? 0 : Number(u)

const orUndefined = (s: string | null): string | undefined => s === null ? undefined : s

const ledgerRowOf = (row: RawLedgerRow): LedgerRow => ({
  callId: row.call_id,
  userId: row.user_id,
  cycle: row.cycle,
  teamId: orUndefined(row.team_id),
  orgId: orUndefined(row.org_id),
  provider: orUndefined(row.provider),
  model: orUndefined(row.model),
  promptTokens: num(row.prompt_tokens),
  completionTokens: num(row.completion_tokens),
  totalTokens: num(row.total_tokens),
  cachedTokens: num(row.cached_tokens),
  cacheWriteTokens: num(row.cache_write_tokens),
  reasoningTokens: num(row.reasoning_tokens),
  costMicros: num(row.cost_micros),
  estimated: num(row.estimated) === 1,
  recordedAt: num(row.recorded_at)
})

// -----------------------------------------------------------------------------
// Errors
// -----------------------------------------------------------------------------

const isSqlError = (u: unknown): boolean =>
  typeof u === "object" && u !== null && (u as { readonly _tag?: unknown })._tag === "SqlError"

const codeOf = (u: unknown): string | undefined => {
  if (typeof u !== "object" || u === null) return undefined
  const code = (u as { readonly code?: unknown }).code
  return typeof code === "string" ? code : undefined
}

const causeOf = (error: unknown): unknown =>
  typeof error === "object" && error !== null && "cause" in error ? (error as { readonly cause: unknown }).cause : error

/** PostgreSQL deadlock and serialization failures, a busy SQLite file: the transaction may simply be run again. */
const isContention = (error: unknown): boolean => {
  const code = codeOf(causeOf(error))
  return code === "40P01" || code === "40001" || (code?.startsWith("SQLITE_BUSY") ?? false) ||
    (code?.startsWith("SQLITE_LOCKED") ?? false)
}

const unreachableCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "57P01",
  "57P02",
  "57P03"
])

/**
 * Refusals that an operator fixes, and waiting does not: a password or a
 * grant (PostgreSQL 28000, 28P01, 42501), a full disk or no room for a
 * connection (class 53), a SQLite file that cannot be written. The store is
 * unavailable meanwhile (an outbox keeps the records, and writes them once it
 * is fixed); the layer's start is not retried for them.
 */
const isRefused = (error: unknown): boolean => {
  const code = codeOf(causeOf(error))
  if (code === undefined) return false
  return code === "28000" || code === "28P01" || code === "42501" || code.startsWith("53") ||
    /^SQLITE_(FULL|READONLY|CANTOPEN|IOERR)/.test(code)
}

const isUnreachable = (error: unknown): boolean => {
  const cause = causeOf(error)
  const code = codeOf(cause)
  if (code !== undefined && (unreachableCodes.has(code) || code.startsWith("08"))) return true
  if (isRefused(error)) return true
  const message = `${(error as { readonly message?: unknown }).message ?? ""} ${
    cause instanceof Error ? cause.message : ""
  }`
  return /Failed to acquire connection|Connection terminated|Connection error|connect/i.test(message) ||
    isContention(error)
}

const describe = (error: unknown): string => {
  const cause = causeOf(error)
  const outer = (error as { readonly message?: unknown }).message
  const inner = cause instanceof Error ? cause.message : undefined
  return [outer, inner].filter((m) => typeof m === "string" && m.length > 0).join(": ") || String(error)
}

const storeError = (method: string) => (error: unknown): TokenStore.TokenStoreError =>
  error instanceof TokenStore.TokenStoreError ? error : new TokenStore.TokenStoreError({
    reason: isUnreachable(error) ? "Unavailable" : "Unknown",
    message: `SqlTokenStore.${method}: ${describe(error)}`,
    cause: error
  })

// -----------------------------------------------------------------------------
// Store
// -----------------------------------------------------------------------------

/**
 * Options of the SQL store.
 *
 * @since 0.3.0
 * @category models
 */
export interface Options {
  /** Bound on one operation (a batch of records is one), its transaction and retries included; default 5 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
  /** How often a transaction that met a deadlock or a busy file is run again; default 10. */
  readonly contentionRetries?: number | undefined
  /** Most records, or reservations, made in one transaction (those issued in the same event-loop turn); default 256. */
  readonly batchSize?: number | undefined
}

const maxCount = Number.MAX_SAFE_INTEGER

const realClock = Clock.make()

const levelRank = { org: 0, team: 1, user: 2 } as const

/**
 * Builds the store over the `SqlClient` in context, creating its tables.
 * Creating them is retried for a few seconds (a database restarting as the
 * application starts), then fails.
 *
 * @since 0.3.0
 * @category constructors
 */
export const make = (
  options?: Options
): Effect.Effect<TokenStore.Service, TokenStore.TokenStoreError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const timeout = Duration.decode(options?.timeout ?? Duration.seconds(5))
    const contentionRetries = options?.contentionRetries ?? 10
    const batchSize = options?.batchSize ?? 256
    if (!Duration.greaterThan(timeout, Duration.zero)) {
      return yield* Effect.dieMessage("SqlTokenStore.make: timeout must be positive")
    }
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.dieMessage(`SqlTokenStore.make: batchSize must be a positive integer, got ${String(batchSize)}`)
    }
    if (!Number.isSafeInteger(contentionRetries) || contentionRetries < 0) {
      return yield* Effect.dieMessage(
        `SqlTokenStore.make: contentionRetries must be a non-negative integer, got ${String(contentionRetries)}`
      )
    }
    yield* migrate.pipe(
      Effect.mapError(storeError("make (creating the tables)")),
      Effect.retry({
        schedule: Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(5))),
        while: (error) => error.reason === "Unavailable"
      }),
      Effect.withClock(realClock)
    )

    const contention = Schedule.exponential("5 millis").pipe(
      Schedule.jittered,
      Schedule.intersect(Schedule.recurs(contentionRetries))
    )

    /**
     * One operation: a transaction, run again on contention, bounded by the
     * timeout, errors named. The operation's time is the `Clock`'s; the waits
     * between attempts and the timeout are real time (as a driver's are), so
     * a test clock never holds them.
     */
    const run = <A>(method: string, body: (now: number) => Effect.Effect<A, unknown>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        sql.withTransaction(body(now)).pipe(
          // A COMMIT or ROLLBACK that fails (the connection lost) is a defect in @effect/sql: here it is
          // what it is, a database out of reach, whose outcome is unknown (a record retried counts once).
          Effect.catchSomeDefect((defect) => isSqlError(defect) ? Option.some(Effect.fail(defect)) : Option.none()),
          Effect.retry({ schedule: contention, while: isContention }),
          Effect.mapError(storeError(method)),
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () =>
              new TokenStore.TokenStoreError({
                reason: "Timeout",
                message: `SqlTokenStore.${method}: no answer within ${Duration.format(timeout)}`
              })
          }),
          Effect.withClock(realClock)
        ))

    const subjectsWhere = (subjects: ReadonlyArray<TokenStore.Subject>) =>
      sql.or(subjects.map((s) => sql`(level = ${s.level} AND subject_id = ${s.id})`))

    const ledgerRow = (input: TokenStore.RecordInput, now: number) => ({
      user_id: input.userId,
      call_id: input.callId,
      cycle: input.cycle,
      team_id: input.teamId ?? null,
      org_id: input.orgId ?? null,
      provider: input.provider ?? null,
      model: input.model ?? null,
      prompt_tokens: input.usage.promptTokens,
      completion_tokens: input.usage.completionTokens,
      total_tokens: input.usage.totalTokens,
      cached_tokens: input.usage.cachedTokens ?? 0,
      cache_write_tokens: input.usage.cacheWriteTokens ?? 0,
      reasoning_tokens: input.usage.reasoningTokens ?? 0,
      cost_micros: input.costMicros ?? 0,
      estimated: input.estimated === true ? 1 : 0,
      recorded_at: now
    })

    /** An account's key; sorted, keys are in lock order (organisation, team, user), every batch's order. */
    const accountKey = (cycle: string, subject: TokenStore.Subject): string =>
      JSON.stringify([levelRank[subject.level], subject.id, cycle])

    /** The key of the account a row of the accounts or holds table belongs to. */
    const rowKey = (row: { readonly cycle: unknown; readonly level: unknown; readonly subject_id: unknown }): string =>
      accountKey(String(row.cycle), { level: row.level as TokenStore.Level, id: String(row.subject_id) })

    /** The accounts of a batch: each `(cycle, subject)` by key, and the keys in lock order. */
    interface BatchAccounts {
      readonly byKey: ReadonlyMap<string, { readonly cycle: string; readonly subject: TokenStore.Subject }>
      readonly sorted: ReadonlyArray<string>
    }

    const batchAccounts = (items: Iterable<readonly [string, ReadonlyArray<TokenStore.Subject>]>): BatchAccounts => {
      const byKey = new Map<string, { readonly cycle: string; readonly subject: TokenStore.Subject }>()
      for (const [cycle, subjects] of items) {
        for (const subject of subjects) byKey.set(accountKey(cycle, subject), { cycle, subject })
      }
      return { byKey, sorted: [...byKey.keys()].sort() }
    }

    /** A condition matching the rows of the accounts `keys` (of `accounts`). */
    const accountsWhere = (accounts: BatchAccounts, keys: ReadonlyArray<string>) =>
      sql.or(keys.map((key) => {
        const { cycle, subject } = accounts.byKey.get(key)!
        return sql`(cycle = ${cycle} AND level = ${subject.level} AND subject_id = ${subject.id})`
      }))

    /**
     * Locks a batch's accounts, in lock order, in one statement that creates
     * the missing ones (a concurrent batch of another process waits for them
     * instead of deadlocking); `fresh` is 1 in the rows it created when
     * `markFresh`, else 0. Returns the rows (`columns` and `fresh`) by key.
     */
    const lockAccounts = (accounts: BatchAccounts, markFresh: boolean, columns: ReadonlyArray<string>) =>
      Effect.map(
        sql<Record<string, unknown> & { readonly cycle: unknown; readonly level: unknown; readonly subject_id: unknown }>`
          INSERT INTO effect_llm_callbacks_accounts ${
          sql.insert(accounts.sorted.map((key) => {
            const { cycle, subject } = accounts.byKey.get(key)!
            return { cycle, level: subject.level, subject_id: subject.id, fresh: markFresh ? 1 : 0 }
          }))
        } ON CONFLICT (cycle, level, subject_id) DO UPDATE SET fresh = 0
          RETURNING cycle, level, subject_id, fresh, ${sql.literal(columns.join(", "))}`,
        (rows) => new Map(rows.map((row) => [rowKey(row), row]))
      )

    /**
     * Writes a batch of records in the current transaction, in a handful of
     * statements whatever its size. The accounts of the whole batch are
     * locked first, in lock order (a concurrent batch of another process
     * waits instead of deadlocking), returning their counters; the ledger
     * rows go in at once, written in (user, call id) order, and say which
     * records are new (the first of a call id within the batch counts, a
     * later one is a duplicate); each new record's increments are checked
     * against the locked counters in order (a record that would pass 2^53 - 1
     * at any of its subjects fails alone: its ledger row is taken out again);
     * the sums go into the accounts in one statement; the holds of every
     * record end.
     */
    const writeBatch = (batch: ReadonlyArray<{ readonly input: TokenStore.RecordInput; readonly now: number }>) =>
      Effect.gen(function*() {
        const accounts = batchAccounts(batch.map(({ input }) => [input.cycle, TokenStore.subjectsOf(input)]))
        const counts = new Map<string, Array<number>>()
        for (const [key, row] of yield* lockAccounts(accounts, false, counterColumns)) {
          counts.set(key, counterColumns.map((column) => num(row[column])))
        }
        const order = batch.map((_, i) => i).sort((a, b) => {
          const x = batch[a]!.input
          const y = batch[b]!.input
          return x.userId < y.userId ? -1 : x.userId > y.userId ? 1 : x.callId < y.callId ? -1 : x.callId > y.callId ? 1 : 0
        })
        const inserted = yield* sql<{ readonly user_id: string; readonly call_id: string }>`
          INSERT INTO effect_llm_callbacks_ledger ${sql.insert(order.map((i) => ledgerRow(batch[i]!.input, batch[i]!.now)))}
          ON CONFLICT (user_id, call_id) DO NOTHING RETURNING user_id, call_id`
        const fresh = new Set(inserted.map((row) => JSON.stringify([row.user_id, row.call_id])))
        const results: Array<Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>> = new Array(batch.length)
        const overflowed: Array<TokenStore.RecordInput> = []
        for (const i of order) {
          const input = batch[i]!.input
          const id = JSON.stringify([input.userId, input.callId])
          if (!fresh.has(id)) {
            results[i] = Either.right("duplicate")
            continue
          }
          // The first of this call id in the batch; any later one is a duplicate.
          fresh.delete(id)
          const increments = TokenStore.incrementsOf(input)
          const subjects = TokenStore.subjectsOf(input)
          const over = subjects.find((subject) => {
            const current = counts.get(accountKey(input.cycle, subject))!
            return current.some((count, c) => count + increments[c]! > maxCount)
          })
          if (over !== undefined) {
            results[i] = Either.left(TokenStore.overflowError(over, input.cycle))
            overflowed.push(input)
            continue
          }
          for (const subject of subjects) {
            const current = counts.get(accountKey(input.cycle, subject))!
            for (let c = 0; c < current.length; c++) current[c]! += increments[c]!
          }
          results[i] = Either.right("recorded")
        }
        if (overflowed.length > 0) {
          yield* sql`DELETE FROM effect_llm_callbacks_ledger WHERE ${
            sql.or(overflowed.map((input) => sql`(user_id = ${input.userId} AND call_id = ${input.callId})`))
          }`
        }
        // The locked rows' new counters, written back at once (every row exists and is locked).
        yield* sql`INSERT INTO effect_llm_callbacks_accounts ${
          sql.insert(accounts.sorted.map((key) => {
            const { cycle, subject } = accounts.byKey.get(key)!
            const values: Record<string, unknown> = { cycle, level: subject.level, subject_id: subject.id }
            const current = counts.get(key)!
            for (let c = 0; c < counterColumns.length; c++) values[counterColumns[c]!] = current[c]!
            return values
          }))
        } ON CONFLICT (cycle, level, subject_id) DO UPDATE SET ${
          sql.literal(counterColumns.map((column) => `${column} = excluded.${column}`).join(", "))
        }`
        yield* sql`DELETE FROM effect_llm_callbacks_holds WHERE ${
          sql.or(batch.map(({ input }) =>
            sql`(cycle = ${input.cycle} AND call_id = ${input.callId} AND ${subjectsWhere(TokenStore.subjectsOf(input))})`
          ))
        }`
        return results
      })

    const accountOf = (subject: TokenStore.Subject, cycle: string, now: number) =>
      Effect.gen(function*() {
        const rows = yield* sql<Record<string, number | string | null>>`SELECT ${sql.literal([...counterColumns, "token_limit"].join(", "))} FROM effect_llm_callbacks_accounts
          WHERE cycle = ${cycle} AND level = ${subject.level} AND subject_id = ${subject.id}`
        const held = yield* sql<{ readonly held: number | string | null }>`SELECT COALESCE(SUM(tokens), 0) AS held
          FROM effect_llm_callbacks_holds
          WHERE cycle = ${cycle} AND level = ${subject.level} AND subject_id = ${subject.id} AND expires_at > ${now}`
        const row = rows[0]
        return {
          counts: row === undefined ? undefined : counterColumns.map((column) => num(row[column])),
          limit: row === undefined || row["token_limit"] === null ? Option.none() : Option.some(num(row["token_limit"])),
          held: num(held[0]?.held)
        }
      })

    /** A subject's live holds during a batch of reservations, by call id. */
    type Holds = Map<string, { tokens: number; expiresAt: number }>

    /**
     * Decides one reservation of a batch, in its transaction, its accounts
     * locked (see `reserveBatch`): `accounts` holds their counters and limits,
     * which nothing can change before the transaction ends (records and
     * limits lock them too), `holds` their holds as the batch has left them
     * so far. Its new holds go into `holds` and, as rows, into `made`, which
     * the batch writes at once; it writes only its rate windows. Fails only
     * with the database's errors; a hold that would pass 2^53 - 1 is this
     * reservation's own failure.
     */
    const reserveOne = (
      input: TokenStore.ReserveInput,
      now: number,
      accounts: ReadonlyMap<string, Record<string, unknown>>,
      holds: ReadonlyMap<string, Holds>,
      recorded: ReadonlySet<string>,
      made: Map<string, Record<string, unknown>>
    ): Effect.Effect<Either.Either<TokenStore.ReserveOutcome, TokenStore.TokenStoreError>, SqlError.SqlError> =>
      Effect.gen(function*() {
        const first = input.subjects[0]!
        // Reserving the same call again (a retry after a lost reply), or one already recorded, holds nothing more.
        const own = holds.get(accountKey(input.cycle, first))!.get(input.callId)
        if ((own !== undefined && own.expiresAt > now) || (first.level === "user" && recorded.has(JSON.stringify([first.id, input.callId])))) {
          return Either.right({ _tag: "Reserved" } as const)
        }
        const window = TokenStore.rateWindowOf(now)
        const verdicts: Array<TokenStore.ReserveOutcome> = []
        for (const subject of input.subjects) {
          const key = accountKey(input.cycle, subject)
          const account = accounts.get(key)
          let held = 0
          for (const hold of holds.get(key)!.values()) if (hold.expiresAt > now) held += hold.tokens
          if (held + input.tokens > Number.MAX_SAFE_INTEGER) {
            return Either.left(TokenStore.overflowError(subject, input.cycle, "reserve"))
          }
          const rate = input.rateLimits?.[subject.level]
          let current = { requests: 0, tokens: 0 }
          if (rate !== undefined) {
            // Rolls the subject's window to the current minute and locks it.
            const rows = yield* sql<{ readonly requests: unknown; readonly tokens: unknown }>`
              INSERT INTO effect_llm_callbacks_rate_windows ${
              sql.insert({ level: subject.level, subject_id: subject.id, window_start: window, requests: 0, tokens: 0 })
            } ON CONFLICT (level, subject_id) DO UPDATE SET
                requests = CASE WHEN effect_llm_callbacks_rate_windows.window_start = excluded.window_start
                  THEN effect_llm_callbacks_rate_windows.requests ELSE 0 END,
                tokens = CASE WHEN effect_llm_callbacks_rate_windows.window_start = excluded.window_start
                  THEN effect_llm_callbacks_rate_windows.tokens ELSE 0 END,
                window_start = excluded.window_start
              RETURNING requests, tokens`
            current = { requests: num(rows[0]?.requests), tokens: num(rows[0]?.tokens) }
          }
          verdicts.push(TokenStore.verdictOf(
            subject,
            {
              used: num(account?.["total_tokens"]),
              held,
              limit: account === undefined || account["token_limit"] === null ? undefined : num(account["token_limit"])
            },
            current,
            rate,
            input.tokens,
            now
          ))
        }
        const outcome = TokenStore.chooseRefusal(verdicts)
        if (outcome._tag !== "Reserved") return Either.right(outcome)
        for (const subject of input.subjects) {
          const key = accountKey(input.cycle, subject)
          const hold = { tokens: input.tokens, expiresAt: now + input.holdTtlMillis }
          holds.get(key)!.set(input.callId, hold)
          made.set(JSON.stringify([key, input.callId]), {
            cycle: input.cycle,
            level: subject.level,
            subject_id: subject.id,
            call_id: input.callId,
            tokens: hold.tokens,
            expires_at: hold.expiresAt
          })
          if (input.rateLimits?.[subject.level] === undefined) continue
          yield* sql`UPDATE effect_llm_callbacks_rate_windows
            SET requests = requests + 1, tokens = tokens + ${input.tokens}
            WHERE level = ${subject.level} AND subject_id = ${subject.id}`
        }
        return Either.right(outcome)
      })

    /**
     * A batch of reservations in the current transaction, decided one after
     * the other in the order they were made, each as if alone (a later one
     * sees the holds of those before it), in a handful of statements
     * whatever its size (rate windows aside: two per rate-limited subject).
     * The accounts of the whole batch are locked first, in lock order, in one
     * statement that creates the missing ones (a concurrent batch of another
     * process waits for them instead of deadlocking, and no reservation of
     * the batch waits again); then their expired holds are deleted, and
     * their live holds and the ledger rows of the batch's call ids read at
     * once; the reservations are decided in memory, and the new holds
     * written at once.
     * Accounts the batch created that no reservation of it holds on are
     * removed again, as if never made.
     */
    const reserveBatch = (batch: ReadonlyArray<{ readonly input: TokenStore.ReserveInput; readonly now: number }>) =>
      Effect.gen(function*() {
        const batchKeys = batchAccounts(batch.map(({ input }) => [input.cycle, input.subjects]))
        const inBatch = accountsWhere(batchKeys, batchKeys.sorted)
        const accounts = yield* lockAccounts(batchKeys, true, ["total_tokens", "token_limit"])
        // Holds past their expiry at the batch's earliest time are gone; each reservation
        // counts those live at its own time.
        let earliest = Infinity
        for (const { now } of batch) earliest = Math.min(earliest, now)
        yield* sql`DELETE FROM effect_llm_callbacks_holds WHERE (${inBatch}) AND expires_at <= ${earliest}`
        const holdRows = yield* sql<
          { readonly cycle: string; readonly level: string; readonly subject_id: string; readonly call_id: string; readonly tokens: unknown; readonly expires_at: unknown }
        >`SELECT cycle, level, subject_id, call_id, tokens, expires_at FROM effect_llm_callbacks_holds WHERE ${inBatch}`
        const holds = new Map<string, Holds>(batchKeys.sorted.map((key) => [key, new Map()]))
        for (const row of holdRows) {
          holds.get(rowKey(row))?.set(String(row.call_id), { tokens: num(row.tokens), expiresAt: num(row.expires_at) })
        }
        const userCalls = batch.filter(({ input }) => input.subjects[0]!.level === "user")
        const recorded = new Set<string>()
        if (userCalls.length > 0) {
          const rows = yield* sql<{ readonly user_id: string; readonly call_id: string }>`
            SELECT user_id, call_id FROM effect_llm_callbacks_ledger WHERE ${
            sql.or(userCalls.map(({ input }) => sql`(user_id = ${input.subjects[0]!.id} AND call_id = ${input.callId})`))
          }`
          for (const row of rows) recorded.add(JSON.stringify([row.user_id, row.call_id]))
        }
        const results: Array<Either.Either<TokenStore.ReserveOutcome, TokenStore.TokenStoreError>> = []
        const made = new Map<string, Record<string, unknown>>()
        const holding = new Set<string>()
        for (const { input, now } of batch) {
          const result = yield* reserveOne(input, now, accounts, holds, recorded, made)
          results.push(result)
          if (Either.isRight(result) && result.right._tag === "Reserved") {
            for (const subject of input.subjects) holding.add(accountKey(input.cycle, subject))
          }
        }
        if (made.size > 0) {
          yield* sql`INSERT INTO effect_llm_callbacks_holds ${sql.insert([...made.values()])}
            ON CONFLICT (cycle, level, subject_id, call_id) DO UPDATE SET
              tokens = excluded.tokens, expires_at = excluded.expires_at`
        }
        const unused = batchKeys.sorted.filter((key) => num(accounts.get(key)!["fresh"]) === 1 && !holding.has(key))
        if (unused.length > 0) yield* sql`DELETE FROM effect_llm_callbacks_accounts WHERE ${accountsWhere(batchKeys, unused)}`
        return results
      })

    const recordAll = (inputs: ReadonlyArray<TokenStore.RecordInput>) =>
      Effect.gen(function*() {
        if (inputs.length === 0) return []
        const now = yield* Clock.currentTimeMillis
        const results = yield* run("recordMany", () => writeBatch(inputs.map((input) => ({ input, now }))))
        const outcomes: Array<TokenStore.RecordOutcome> = []
        for (const result of results) {
          if (Either.isLeft(result)) return yield* Effect.fail(storeError("recordMany")(result.left))
          outcomes.push(result.right)
        }
        return outcomes
      })

    /**
     * An operation whose calls issued in the same event-loop turn (up to
     * `batchSize`) share one transaction, as the Redis store's share a
     * script call; each keeps its own outcome, and its time is its caller's
     * `Clock`. A caller interrupted while its call waits for its batch takes
     * it out; once the batch runs, the call is made, and `abandoned` is given
     * what became of it.
     */
    const perTurn = <I, O>(
      method: string,
      body: (
        batch: ReadonlyArray<{ readonly input: I; readonly now: number }>
      ) => Effect.Effect<ReadonlyArray<Either.Either<O, TokenStore.TokenStoreError>>, unknown>,
      abandoned: (input: I, outcome: O) => void = () => {}
    ) => {
      interface Queued {
        readonly input: I
        readonly now: number
        readonly resume: (effect: Effect.Effect<O, TokenStore.TokenStoreError>) => void
        cancelled: boolean
      }
      let queue: Array<Queued> = []
      let scheduled = false
      const flush = () => {
        scheduled = false
        const batch = queue.filter((item) => !item.cancelled).slice(0, batchSize)
        queue = queue.filter((item) => !item.cancelled).slice(batchSize)
        if (queue.length > 0) schedule()
        if (batch.length === 0) return
        Effect.runFork(run(method, () => body(batch))).addObserver((exit) => {
          if (Exit.isFailure(exit)) {
            const failure = Cause.failureOption(exit.cause)
            const error = Option.isSome(failure) ? failure.value : storeError(method)(Cause.squash(exit.cause))
            for (const item of batch) item.resume(Effect.fail(error))
            return
          }
          exit.value.forEach((result, i) => {
            const item = batch[i]!
            if (item.cancelled && Either.isRight(result)) abandoned(item.input, result.right)
            item.resume(Either.isLeft(result) ? Effect.fail(storeError(method)(result.left)) : Effect.succeed(result.right))
          })
        })
      }
      const schedule = () => {
        if (!scheduled) {
          scheduled = true
          setImmediate(flush)
        }
      }
      return (input: I): Effect.Effect<O, TokenStore.TokenStoreError> =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.async<O, TokenStore.TokenStoreError>((resume) => {
            const item: Queued = { input, now, resume, cancelled: false }
            queue.push(item)
            schedule()
            return Effect.sync(() => {
              item.cancelled = true
            })
          }))
    }

    const release = (input: TokenStore.ReleaseInput) =>
      run("release", () =>
        sql`DELETE FROM effect_llm_callbacks_holds
          WHERE cycle = ${input.cycle} AND call_id = ${input.callId} AND ${subjectsWhere(input.subjects)}`).pipe(
          Effect.asVoid
        )

    // A record whose caller was interrupted once its batch ran is counted: a retry of it is a duplicate.
    const record = perTurn("record", writeBatch)
    // A hold made for a caller interrupted meanwhile is released (its caller's release may have run first).
    const reserve = perTurn("reserve", reserveBatch, (input, outcome) => {
      if (outcome._tag === "Reserved") Effect.runFork(Effect.ignore(release(input)))
    })

    const backend: TokenStore.Service = {
      record,
      recordMany: recordAll,
      stats: (owner, cycle) =>
        run("stats", (now) =>
          Effect.map(
            accountOf(TokenStore.subjectOf(owner), cycle, now),
            (account) => TokenStore.statsOf(account.counts, account.limit, account.held)
          )),
      reset: (owner, cycle) => {
        const subject = TokenStore.subjectOf(owner)
        return run("reset", (now) =>
          Effect.gen(function*() {
            yield* sql`UPDATE effect_llm_callbacks_accounts
              SET ${sql.literal(counterColumns.map((column) => `${column} = 0`).join(", "))} WHERE cycle = ${cycle} AND level = ${subject.level} AND subject_id = ${subject.id}`
            // An account with neither a limit nor a hold is gone, as if never used.
            yield* sql`DELETE FROM effect_llm_callbacks_accounts
              WHERE cycle = ${cycle} AND level = ${subject.level} AND subject_id = ${subject.id}
                AND token_limit IS NULL AND NOT EXISTS (
                  SELECT 1 FROM effect_llm_callbacks_holds h
                  WHERE h.cycle = ${cycle} AND h.level = ${subject.level} AND h.subject_id = ${subject.id}
                    AND h.expires_at > ${now})`
          }))
      },
      setLimit: (owner, cycle, limit) => {
        const subject = TokenStore.subjectOf(owner)
        return run(
          "setLimit",
          () =>
            sql`INSERT INTO effect_llm_callbacks_accounts ${
              sql.insert({ cycle, level: subject.level, subject_id: subject.id, token_limit: limit })
            } ON CONFLICT (cycle, level, subject_id) DO UPDATE SET token_limit = excluded.token_limit`
        ).pipe(Effect.asVoid)
      },
      checkLimit: (owner, cycle) =>
        run("checkLimit", (now) =>
          Effect.map(
            accountOf(TokenStore.subjectOf(owner), cycle, now),
            (account) => TokenStore.makeLimitCheck(account.counts?.[2] ?? 0, account.limit, account.held)
          )),
      users: (cycle) =>
        run("users", () =>
          sql<{ readonly subject_id: string }>`SELECT subject_id FROM effect_llm_callbacks_accounts
            WHERE cycle = ${cycle} AND level = 'user'`).pipe(
            // Sorted here, by code units like the other stores, not by the database's collation.
            Effect.map((rows) => rows.map((row) => row.subject_id).sort())
          ),
      reserve,
      release,
      // The ledger keeps every call id: a replay of any age counts once.
      idempotencyWindowMillis: Number.POSITIVE_INFINITY
    }
    return TokenStore.withValidation(backend)
  })

/**
 * Reads the ledger: the recorded calls of a cycle (optionally of one user),
 * oldest first.
 *
 * @since 0.3.0
 * @category ledger
 */
export const ledger = (
  query: LedgerQuery
): Effect.Effect<ReadonlyArray<LedgerRow>, TokenStore.TokenStoreError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<RawLedgerRow>`SELECT * FROM effect_llm_callbacks_ledger
      WHERE cycle = ${query.cycle}${query.userId === undefined ? sql`` : sql` AND user_id = ${query.userId}`}
      ORDER BY recorded_at, user_id, call_id${query.limit === undefined ? sql`` : sql` LIMIT ${query.limit}`}`
    return rows.map(ledgerRowOf)
  }).pipe(Effect.mapError(storeError("ledger")))

/**
 * The token store over the `SqlClient` in context.
 *
 * @since 0.3.0
 * @category layers
 */
export const layer = (
  options?: Options
): Layer.Layer<TokenStore.TokenStore, TokenStore.TokenStoreError, SqlClient.SqlClient> =>
  Layer.effect(TokenStore.TokenStore, make(options))

/** A database out of reach as the application starts: a few attempts over about 3 seconds, then the layer fails. */
const connectRetry = Schedule.exponential("100 millis").pipe(
  Schedule.intersect(Schedule.recurs(5)),
  Schedule.whileInput((error: TokenStore.TokenStoreError | ConfigError.ConfigError) =>
    error instanceof TokenStore.TokenStoreError && error.reason === "Unavailable" && !isRefused(error.cause)
  )
)

const importDriver = <A>(name: string, load: () => Promise<A>) =>
  Effect.tryPromise({
    try: load,
    catch: (cause) =>
      new TokenStore.TokenStoreError({
        reason: "Unknown",
        message: `SqlTokenStore: cannot load ${name} (install it: npm install ${name}): ${describe(cause)}`,
        cause
      })
  })

/**
 * The token store in PostgreSQL, through `@effect/sql-pg` (an optional peer,
 * loaded when the layer is built): a connection pool for the URL, closed
 * with the layer. A server out of reach at start is tried again for about 3
 * seconds (a reset or a restart does not fail the application), then the
 * layer fails with reason `Unavailable`. The `SqlClient` is provided too
 * (for {@link ledger}).
 *
 * @since 0.3.0
 * @category layers
 */
export const layerPg = (
  config: { readonly url: Redacted.Redacted<string> } & Options
): Layer.Layer<TokenStore.TokenStore | SqlClient.SqlClient, TokenStore.TokenStoreError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(
    importDriver("@effect/sql-pg", () => import("@effect/sql-pg/PgClient")),
    (PgClient) =>
      Layer.provideMerge(
        layer(config),
        // Retried on a real clock: a test clock in the application never holds its start.
        Layer.scopedContext(
          Layer.build(PgClient.layer({ url: config.url }).pipe(Layer.mapError(storeError("connect")))).pipe(
            Effect.retry(connectRetry),
            Effect.withClock(realClock)
          )
        )
      )
  ))

/**
 * The token store in a local SQLite file (created if missing), through
 * `@effect/sql-sqlite-node`. The `SqlClient` is provided too (for
 * {@link ledger}).
 *
 * @since 0.3.0
 * @category layers
 */
export const layerSqlite = (
  config: { readonly filename: string } & Options
): Layer.Layer<TokenStore.TokenStore | SqlClient.SqlClient, TokenStore.TokenStoreError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(
    importDriver("@effect/sql-sqlite-node", () => import("@effect/sql-sqlite-node/SqliteClient")),
    (SqliteClient) =>
      Layer.provideMerge(
        layer(config),
        opened(SqliteClient.layer({ filename: config.filename }), config.filename)
      )
  ))
