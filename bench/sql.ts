/**
 * Records per second into the SQL token store (`layers/SqlTokenStore.ts`):
 * each record is one transaction writing its ledger row and its counters.
 * SQLite on a temporary file, and PostgreSQL when one is reachable
 * (`DATABASE_URL`, else 127.0.0.1:5432; a database of its own, dropped after).
 * 100 records in flight, 50 users; every run checks the totals and the
 * ledger's row count exactly.
 *
 * Run alone: `npx tsx bench/sql.ts`.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Layer, Redacted } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import * as SqlTokenStore from "../layers/SqlTokenStore.js"
import { TokenStore } from "../src/index.js"
import { createDatabase, type OwnDatabase, postgresServerUrl } from "../test/support/globalSetup.js"

const cycle = "2026-12-01"
const users = 50

const workload = (
  store: Layer.Layer<TokenStore.TokenStore | SqlClient.SqlClient, unknown>,
  records: number
): Promise<number> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const tokens = yield* TokenStore.TokenStore
      const prefix = `bench-${Date.now().toString(36)}`
      const start = performance.now()
      yield* Effect.forEach(
        Array.from({ length: records }, (_, i) => i),
        (i) =>
          tokens.record({
            callId: `${prefix}-${i}`,
            userId: `${prefix}-u${i % users}`,
            cycle,
            usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 },
            provider: "openai",
            model: "gpt-4o-mini"
          }),
        { concurrency: 100, discard: true }
      )
      const seconds = (performance.now() - start) / 1000
      let total = 0
      let rows = 0
      for (let u = 0; u < users; u++) {
        total += (yield* tokens.stats(`${prefix}-u${u}`, cycle)).totalTokens
        rows += (yield* SqlTokenStore.ledger({ cycle, userId: `${prefix}-u${u}` })).length
      }
      if (total !== records * 15 || rows !== records) {
        return yield* Effect.dieMessage(`inexact: ${total} tokens, ${rows} ledger rows for ${records} records`)
      }
      return Math.round(records / seconds)
    }).pipe(Effect.provide(store), Effect.orDie)
  )

const postgres = (): Promise<OwnDatabase | undefined> =>
  createDatabase(postgresServerUrl(), `effect_llm_callbacks_bench_${process.pid}`).catch(() => undefined)

/**
 * @since 0.3.0
 */
export const run = async (records = 5_000): Promise<Array<Record<string, string | number>>> => {
  const rows: Array<Record<string, string | number>> = []
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "effect-llm-callbacks-bench-"))
  try {
    const perSecond = await workload(SqlTokenStore.layerSqlite({ filename: path.join(directory, "store.sqlite") }), records)
    rows.push({ store: "SQLite file (WAL), 1 connection", records, "records/s": perSecond, exact: "yes" })
  } finally {
    fs.rmSync(directory, { recursive: true, force: true })
  }
  const pg = await postgres()
  if (pg === undefined) {
    rows.push({ store: "PostgreSQL: none reachable (DATABASE_URL or 127.0.0.1:5432)", records: 0, "records/s": "-", exact: "-" })
  } else {
    try {
      const perSecond = await workload(SqlTokenStore.layerPg({ url: Redacted.make(pg.url) }), records)
      rows.push({ store: "PostgreSQL on loopback, @effect/sql-pg pool", records, "records/s": perSecond, exact: "yes" })
    } finally {
      await pg.drop()
    }
  }
  return rows
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
