import { Effect } from "effect"
import { Redis } from "ioredis"
import * as RedisTokenStore from "/work/main/layers/RedisTokenStore.js"
import { startRedisProcess, stopRedisProcess } from "/work/main/test/support/globalSetup.js"
const server = await startRedisProcess()
const redis = new Redis(server.url)
const n = 50_000
const t0 = performance.now()
await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
  const store = yield* RedisTokenStore.make({ url: server.url })
  yield* Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) => store.record({ callId: `c-${i}-${Math.random()}`, userId: `user-${i % 50}`, cycle: "2026-12-01", usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 } }), { concurrency: 100, discard: true })
})))
const ms = performance.now() - t0
const stats = await redis.info("commandstats")
console.log(Math.round(n / ms * 1000), "records/s")
console.log(stats.split("\n").filter((l) => /evalsha|eval:/.test(l)).join("\n"))
redis.disconnect()
await stopRedisProcess(server)
