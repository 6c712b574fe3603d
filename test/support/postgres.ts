/**
 * PostgreSQL for the tests: a database of the run's own, created by the
 * global setup on `DATABASE_URL`'s server or the local one
 * (127.0.0.1:5432, trust auth) and dropped when the run ends.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { inject } from "vitest"

declare module "vitest" {
  export interface ProvidedContext {
    /** URL of the run's database, empty when none could be created (see `postgresSetupError`). */
    readonly postgresUrl: string
    readonly postgresSetupError: string
  }
}

const ci = process.env["CI"] !== undefined && process.env["CI"] !== ""

/**
 * Whether the PostgreSQL suites are skipped: outside CI when no database could
 * be created (a banner says why and how to enable them); with `CI` set the
 * global setup has failed the run already.
 */
export const skipWithoutPostgres: boolean = inject("postgresUrl") === "" && !ci

/** Prints, once per suite file, why a PostgreSQL suite is skipped and how to run it. */
export const bannerWithoutPostgres = (suite: string): void => {
  if (skipWithoutPostgres) {
    console.warn(
      `\n[skipped] ${suite}: no PostgreSQL (${inject("postgresSetupError")}).\n` +
        `          Enable it: start PostgreSQL on 127.0.0.1:5432 or set DATABASE_URL, then rerun npm test.\n`
    )
  }
}

/** The URL of the run's database. */
export const postgresUrl = (): string => {
  const url = inject("postgresUrl")
  if (url === "") throw new Error(`No PostgreSQL for the tests: ${inject("postgresSetupError")}`)
  return url
}

/** A client of the run's database (a pool, closed with the layer); the URL is read when the layer is built. */
export const postgresClient: Layer.Layer<SqlClient.SqlClient> = Layer.unwrapEffect(
  Effect.sync(() => PgClient.layer({ url: Redacted.make(postgresUrl()) }).pipe(Layer.orDie))
)
