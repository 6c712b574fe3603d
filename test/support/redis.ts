/**
 * Redis for the tests: the shared server started by the global setup (or
 * `REDIS_URL`), and dedicated servers a test starts and stops itself.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { spawnSync } from "node:child_process"
import { Redis } from "ioredis"
import { assert, inject } from "vitest"
import { usageKey } from "../../layers/RedisTokenStore.js"
import type * as TokenStore from "../../src/TokenStore.js"
import { type RedisProcess, startRedisProcess } from "./globalSetup.js"

export { freePort, type RedisProcess, startRedisProcess, stopRedisProcess } from "./globalSetup.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** URL of the shared Redis, empty when none could be started (see `redisSetupError`). */
    readonly redisUrl: string
    readonly redisSetupError: string
  }
}

/**
 * The URL of the shared Redis. Fails the calling test (never skips it) when the
 * global setup could not provide one.
 */
export const redisUrl = (): string => {
  const url = inject("redisUrl")
  if (url === undefined || url === "") {
    throw new Error(`No Redis for the tests: ${inject("redisSetupError") || "the global setup did not run"}`)
  }
  return url
}

let prefixCounter = 0

/** A key prefix no other test run uses, so suites sharing one Redis never see each other's keys. */
export const uniqueKeyPrefix = (name: string): string =>
  `test_${name}_${process.pid}_${Date.now().toString(36)}_${(prefixCounter++).toString(36)}`

/** A redis-server dedicated to one test, which the test may stop and start again on the same port. */
export interface DedicatedRedis {
  readonly port: number
  readonly url: string
  /** Kills the server (SIGKILL, like a crash) and waits for it to exit. */
  readonly stop: Effect.Effect<void>
  /** Starts the server again on the same port. */
  readonly start: Effect.Effect<void>
  /** Freezes the server (SIGSTOP): its connections stay open and nothing is answered, as in a hang. */
  readonly pause: Effect.Effect<void>
  /** Lets a frozen server go on (SIGCONT): it answers what was sent meanwhile, in order. */
  readonly resume: Effect.Effect<void>
}

/**
 * Starts a redis-server of the test's own on a free port; it is killed (by
 * PID) when the scope closes. It never touches the shared server.
 */
export const dedicatedRedis: Effect.Effect<DedicatedRedis, never, Scope.Scope> = Effect.gen(function*() {
  let running: RedisProcess | undefined
  const kill = Effect.promise(async () => {
    const current = running
    running = undefined
    if (current === undefined || current.child.pid === undefined) return
    if (current.child.exitCode !== null || current.child.signalCode !== null) return
    const exited = new Promise((resolve) => current.child.once("exit", resolve))
    process.kill(current.child.pid, "SIGKILL")
    await exited
  })
  const signal = (name: NodeJS.Signals) =>
    Effect.sync(() => {
      if (running?.child.pid !== undefined) process.kill(running.child.pid, name)
    })
  const first = yield* Effect.acquireRelease(
    Effect.promise(async () => (running = await startRedisProcess())),
    // A frozen server is let go first: SIGKILL ends it either way, but its exit is awaited.
    () => Effect.zipRight(signal("SIGCONT"), kill)
  )
  return {
    port: first.port,
    url: first.url,
    stop: kill,
    start: Effect.promise(async () => {
      if (running === undefined) running = await startRedisProcess({ port: first.port })
    }),
    pause: signal("SIGSTOP"),
    resume: signal("SIGCONT")
  }
})

/** A plain client straight to a Redis (never through a proxy), to read what is really stored; closed with the scope. */
export const directClient = (url: string): Effect.Effect<Redis, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
      await redis.connect()
      return redis
    }),
    (redis) => Effect.promise(() => redis.quit().then(() => undefined, () => redis.disconnect()))
  )

/**
 * Asserts that the counters stored in Redis for each user of a cycle, read
 * directly (not through the store), equal the expected totals exactly.
 */
export const assertStoredTotals = (
  keyPrefix: string,
  cycle: string,
  expected: ReadonlyMap<string, TokenStore.TokenCounts>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const redis = yield* directClient(redisUrl())
    for (const [userId, totals] of expected) {
      const [prompt, completion, total] = yield* Effect.promise(() =>
        redis.hmget(usageKey(keyPrefix, userId, cycle), "prompt_tokens", "completion_tokens", "total_tokens")
      )
      assert.deepStrictEqual(
        { promptTokens: Number(prompt), completionTokens: Number(completion), totalTokens: Number(total) },
        totals,
        userId
      )
    }
  })

const redisServerOnPath = spawnSync("sh", ["-c", "command -v redis-server"]).status === 0
const ci = process.env["CI"] !== undefined && process.env["CI"] !== ""

/**
 * Whether the Redis suites are skipped: outside CI when redis-server is not on PATH (the suites that
 * start servers of their own need it) or no shared Redis could be had (`REDIS_URL`, or one the global
 * setup starts); a banner names the suite and how to enable it. With `CI` set they run, and fail.
 */
export const skipWithoutRedis: boolean = (!redisServerOnPath || inject("redisUrl") === "") && !ci

/** Prints the banner of a suite skipped for want of Redis. */
export const bannerWithoutRedis = (suite: string): void => {
  if (skipWithoutRedis) {
    const why = !redisServerOnPath ? "redis-server is not on PATH" : inject("redisSetupError")
    console.warn(
      `\n[skipped] ${suite}: ${why}. Install redis-server (apt-get install -y redis-server) ` +
        `to run this suite; with CI set it fails instead of being skipped.\n`
    )
  }
}
