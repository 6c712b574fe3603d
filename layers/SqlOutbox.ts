/**
 * A durable storage for the `Outbox` on `@effect/sql`: a table of pending
 * usage records in the database of the `SqlClient` in context, created by
 * `@effect/sql`'s Migrator. With `layerSqlite` it is a local SQLite file
 * (`@effect/sql-sqlite-node`): a record the token store could not take is
 * written there before `record` answers `"queued"`, so it survives the
 * process being killed, and the next start replays it (or, when two
 * processes share the file, as in a rolling restart, the other one: see the
 * outbox's `rescanInterval`). Replays are exact:
 * records are idempotent per call id, within the store's window, which the
 * outbox's `maxAge` may not exceed.
 *
 * Table `effect_llm_callbacks_outbox`: `id` (user and call id, the primary
 * key), `enqueued_at` (epoch ms), `record` (the record as JSON).
 *
 * @since 0.3.0
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import type * as ConfigError from "effect/ConfigError"
import * as Arr from "effect/Array"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { opened } from "../src/internal/sqliteFile.js"
import * as Outbox from "../src/Outbox.js"
import type * as TokenStore from "../src/TokenStore.js"

const migrations = Migrator.fromRecord({
  "0001_create_outbox": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`CREATE TABLE IF NOT EXISTS effect_llm_callbacks_outbox (
      id TEXT PRIMARY KEY,
      enqueued_at BIGINT NOT NULL,
      record TEXT NOT NULL
    )`)
})

const runMigrations = Migrator.make({})({ loader: migrations, table: "effect_llm_callbacks_outbox_migrations" })

// BIGINT comes back as a number (SQLite), a bigint, or a string (PostgreSQL's driver).
const Row = Schema.Struct({
  id: Schema.String,
  enqueued_at: Schema.Union(Schema.Number, Schema.BigIntFromSelf, Schema.NumberFromString),
  record: Schema.String
})

const storageError = (what: string) => (cause: unknown) =>
  new Outbox.OutboxError({ message: `SqlOutbox: cannot ${what}: ${cause instanceof Error ? cause.message : String(cause)}`, cause })

/**
 * Builds the storage over the `SqlClient` in context, creating its table.
 *
 * @since 0.3.0
 * @category constructors
 */
export const make: Effect.Effect<Outbox.Storage, Outbox.OutboxError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* runMigrations.pipe(Effect.mapError(storageError("create its table")))
  const decode = Schema.decodeUnknown(Schema.Array(Row))
  const insert = (entries: ReadonlyArray<Outbox.Entry>) =>
    sql`INSERT INTO effect_llm_callbacks_outbox ${
      sql.insert(entries.map((entry) => ({ id: entry.id, enqueued_at: entry.enqueuedAt, record: JSON.stringify(entry.input) })))
    } ON CONFLICT (id) DO NOTHING`.pipe(Effect.asVoid)
  return {
    durable: true,
    load: sql`SELECT id, enqueued_at, record FROM effect_llm_callbacks_outbox ORDER BY enqueued_at, id`.pipe(
      Effect.flatMap(decode),
      Effect.map((rows) =>
        rows.map((row): Outbox.Entry => ({
          id: row.id,
          enqueuedAt: Number(row.enqueued_at),
          input: JSON.parse(row.record) as TokenStore.RecordInput
        }))
      ),
      Effect.mapError(storageError("read the pending records"))
    ),
    append: (entry) => insert([entry]).pipe(Effect.mapError(storageError("keep a record"))),
    // One transaction (the database writes to disk once for them all), in statements of at most 500 rows (a
    // database bounds a statement's parameters).
    appendAll: (entries) =>
      Effect.forEach(Arr.chunksOf(entries, 500), insert, { discard: true }).pipe(
        sql.withTransaction,
        Effect.mapError(storageError(`keep ${entries.length} records`))
      ),
    remove: (ids) =>
      ids.length === 0
        ? Effect.void
        : sql`DELETE FROM effect_llm_callbacks_outbox WHERE ${sql.in("id", ids)}`.pipe(
          Effect.asVoid,
          Effect.mapError(storageError("remove written records"))
        )
  }
})

/**
 * The storage in the database of the `SqlClient` in context.
 *
 * @since 0.3.0
 * @category layers
 */
export const layer: Layer.Layer<Outbox.OutboxStorage, Outbox.OutboxError, SqlClient.SqlClient> = Layer.effect(
  Outbox.OutboxStorage,
  make
)

/**
 * The storage in a local SQLite file (created if missing), through
 * `@effect/sql-sqlite-node`.
 *
 * @since 0.3.0
 * @category layers
 */
export const layerSqlite = (options: {
  /** The file; its directory must exist. */
  readonly filename: string
}): Layer.Layer<Outbox.OutboxStorage, Outbox.OutboxError | ConfigError.ConfigError> =>
  layer.pipe(Layer.provide(opened(SqliteClient.layer({ filename: options.filename }), options.filename)))
