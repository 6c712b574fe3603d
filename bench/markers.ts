/**
 * Redis memory per recorded call: each record keeps an idempotency marker for the dedupe window (24 h by
 * default), the one cost that grows with the number of calls rather than of users. Measured on a
 * redis-server of its own (so that `INFO memory` sees only these keys): `used_memory` before and after
 * recording 50,000 distinct calls of 50 users through `RedisTokenStore.record`, divided by the calls.
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
    const before = await usedMemory(redis)
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const store = yield* RedisTokenStore.make({ url: server.url })
      yield* Effect.forEach(
        Array.from({ length: records }, (_, i) => i),
        (i) =>
          store.record({
            callId: crypto.randomUUID(),
            userId: `user-${i % 50}`,
            cycle: "2026-12-01",
            usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 }
          }),
        { concurrency: 100, discard: true }
      )
    })))
    const after = await usedMemory(redis)
    return [{
      measure: "Redis memory per recorded call (idempotency marker, 24 h window; UUID call ids)",
      records,
      "bytes/call": Math.round((after - before) / records),
      target: "<= 64"
    }]
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
