// Global test setup: provides the shared Redis to the suites that need it
// (`redisUrl()` in test/support/redis.ts). `REDIS_URL` wins; otherwise a
// redis-server is started on a free loopback port and killed by PID at
// teardown. And a PostgreSQL database of the run's own (`postgresUrl()` in
// test/support/postgres.ts), created on `DATABASE_URL`'s server or the local
// one and dropped at teardown. When a server is missing the run fails on CI;
// locally the suites that need it are skipped, with a banner saying how to
// enable them.
//
// The redis-server process helpers live here, not in redis.ts, because a
// global setup runs outside the test workers and must not import "vitest".
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { type ChildProcess, spawn } from "node:child_process"
import * as net from "node:net"
import type { TestProject } from "vitest/node"

const installHint = "Install redis-server (e.g. `apt-get install -y redis-server`) or set REDIS_URL."

/** A free TCP port on the loopback interface. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no port assigned"))))
    })
  })

const pingOnce = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    let reply = ""
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.on("data", (chunk) => {
      reply += chunk.toString("utf8")
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"))
    })
  })

/** A redis-server process started by the tests. */
export interface RedisProcess {
  readonly port: number
  readonly url: string
  readonly child: ChildProcess
}

/**
 * Starts `redis-server` on a loopback port (a free one unless given), without
 * persistence, and waits until it answers PING (at most `timeoutMs`).
 */
export const startRedisProcess = async (options?: {
  readonly port?: number | undefined
  readonly timeoutMs?: number | undefined
}): Promise<RedisProcess> => {
  const port = options?.port ?? (await freePort())
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "pipe", "pipe"] }
  )
  let output = ""
  child.stdout?.on("data", (chunk: Buffer) => (output = (output + chunk.toString("utf8")).slice(-4000)))
  child.stderr?.on("data", (chunk: Buffer) => (output = (output + chunk.toString("utf8")).slice(-4000)))
  let spawnError: Error | undefined
  child.once("error", (error) => (spawnError = error))
  const deadline = Date.now() + (options?.timeoutMs ?? 10_000)
  while (Date.now() < deadline) {
    if (spawnError !== undefined) {
      const notFound = (spawnError as NodeJS.ErrnoException).code === "ENOENT"
      throw new Error(
        notFound ? `redis-server was not found. ${installHint}` : `redis-server failed to start: ${spawnError.message}`
      )
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server exited (${child.exitCode ?? child.signalCode}) on port ${port}:\n${output}`)
    }
    if (await pingOnce(port)) return { port, url: `redis://127.0.0.1:${port}`, child }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await stopRedisProcess({ port, url: "", child })
  throw new Error(`redis-server on port ${port} did not answer PING in time:\n${output}`)
}

/** Stops a redis-server started by `startRedisProcess`, by its PID: SIGTERM, then SIGKILL after 5 s. */
export const stopRedisProcess = (process_: RedisProcess): Promise<void> =>
  new Promise((resolve) => {
    const { child } = process_
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return resolve()
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL")
    }, 5_000)
    child.once("exit", () => {
      clearTimeout(timer)
      resolve()
    })
    process.kill(child.pid, "SIGTERM")
  })

/** The server the SQL suites use: `DATABASE_URL`, else the local PostgreSQL (trust auth). */
export const postgresServerUrl = (): string => process.env["DATABASE_URL"] || "postgres://postgres@127.0.0.1:5432/postgres"

const postgresHint = "Start PostgreSQL on 127.0.0.1:5432 (trust auth; e.g. `apt-get install -y postgresql`) or set " +
  "DATABASE_URL to a server where the user may create databases."

/** A database of its own on a PostgreSQL server, and how to drop it. */
export interface OwnDatabase {
  readonly url: string
  readonly drop: () => Promise<void>
}

/**
 * Creates a database named `name` on the PostgreSQL server of `serverUrl`
 * (its user must be allowed to create databases); fails when the server
 * cannot be reached or refuses.
 */
export const createDatabase = async (serverUrl: string, name: string): Promise<OwnDatabase> => {
  const onServer = (statement: string) =>
    Effect.runPromise(
      Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement)).pipe(
        Effect.provide(PgClient.layer({ url: Redacted.make(serverUrl), connectTimeout: "3 seconds" })),
        Effect.timeout("10 seconds")
      )
    )
  await onServer(`CREATE DATABASE "${name}"`)
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: () => onServer(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).then(() => undefined, () => undefined)
  }
}

/**
 * Creates a database of this run's own on the PostgreSQL server (dropped at
 * teardown), so the SQL suites never touch data they did not create.
 */
const setupPostgres = async (project: TestProject): Promise<() => Promise<void>> => {
  const server = postgresServerUrl()
  let database: OwnDatabase
  try {
    database = await createDatabase(server, `effect_llm_callbacks_test_${process.pid}_${Date.now().toString(36)}`)
  } catch (error) {
    const message = `PostgreSQL at ${new URL(server).host}: ${describeError(error)}. ${postgresHint}`
    if (process.env["CI"]) throw new Error(`The tests need PostgreSQL and none could be used: ${message}`)
    project.provide("postgresUrl", "")
    project.provide("postgresSetupError", message)
    return async () => {}
  }
  project.provide("postgresUrl", database.url)
  project.provide("postgresSetupError", "")
  return database.drop
}

const describeError = (error: unknown): string => {
  const cause = typeof error === "object" && error !== null && "cause" in error ? error.cause : undefined
  const inner = cause instanceof Error ? `: ${cause.message}` : ""
  return `${error instanceof Error ? error.message : String(error)}${inner}`
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const teardownPostgres = await setupPostgres(project)
  const teardownRedis = await setupRedis(project)
  return async () => {
    await teardownRedis()
    await teardownPostgres()
  }
}

const setupRedis = async (project: TestProject): Promise<() => Promise<void>> => {
  const fromEnv = process.env["REDIS_URL"]
  if (fromEnv !== undefined && fromEnv !== "") {
    project.provide("redisUrl", fromEnv)
    project.provide("redisSetupError", "")
    return async () => {}
  }
  let server: RedisProcess | undefined
  try {
    server = await startRedisProcess()
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    if (process.env["CI"]) {
      throw new Error(`The tests need Redis and none could be started: ${message}`)
    }
    project.provide("redisUrl", "")
    project.provide("redisSetupError", message)
    return async () => {}
  }
  project.provide("redisUrl", server.url)
  project.provide("redisSetupError", "")
  const started = server
  return () => stopRedisProcess(started)
}
