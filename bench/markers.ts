/**
 * Redis memory per recorded call: each record keeps an idempotency marker for the dedupe window (24 h by
 * default), the one cost that grows with the number of calls rather than of users. Measured on a
 * redis-server of its own (so that `INFO memory` sees only these keys, emptied between shapes):
 * `used_memory` before and after recording 50,000 distinct calls (UUID ids) through
 * `RedisTokenStore.record`, divided by the calls; for 50 users (1,000 calls each), 1,000 users (50 each)
 * and 10,000 users (5 calls each, where the per-user hashes weigh most). The usage hashes are created before `before`
 * is read, so only the markers are counted.
 *
 * Run alone: `npx tsx bench/markers.ts`.
 */
import { Effect } from "effect"
import { Redis } from "ioredis"
import { pathToFileURL } from "node:url"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import { startRedisProcess, stopRedisProcess } from "../test/support/globalSetup.js"

const usedMemory = async (redis: Redis): Promise<number> => {
  const info = await redis.info("memory")
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? Number.NaN)
}

/**
 * @since 0.3.0
 */
export const run = async (records = 50_000): Promise<Array<Record<string, string | number>>> => {
  const server = await startRedisProcess()
  const redis = new Redis(server.url, { lazyConnect: true })
  try {
    await redis.connect()
    const rows: Array<Record<string, string | number>> = []
    for (const users of [50, 1_000, 10_000]) {
      await redis.flushall()
      const bytes = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const store = yield* RedisTokenStore.make({ url: server.url })
        const cycle = "2026-12-01"
        // The usage hashes exist before: what is measured is the markers alone.
        yield* Effect.forEach(
          Array.from({ length: users }, (_, u) => u),
          (u) => store.setLimit(`user-${u}`, cycle, 1_000_000_000),
          { concurrency: 100, discard: true }
        )
        const before = yield* Effect.promise(() => usedMemory(redis))
        yield* Effect.forEach(
          Array.from({ length: records }, (_, i) => i),
          (i) =>
            store.record({
              callId: crypto.randomUUID(),
              userId: `user-${i % users}`,
              cycle,
              usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 }
            }),
          { concurrency: 100, discard: true }
        )
        const after = yield* Effect.promise(() => usedMemory(redis))
        return after - before
      })))
      rows.push({
        measure: `Redis memory per recorded call (markers, 24 h window, UUID ids), ${users} users`,
        records,
        "bytes/call": Math.round(bytes / records),
        target: "<= 64"
      })
    }
    return rows
  } finally {
    redis.disconnect()
    await stopRedisProcess(server)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
