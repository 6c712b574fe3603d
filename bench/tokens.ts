/**
 * Records per second into Redis on loopback through the token-usage handler
 * (instrumented calls, one Lua script per record, idempotent), against the
 * Python design's naive recording: `HINCRBY` per field, one `await` at a time.
 *
 * Uses `REDIS_URL`, or starts a redis-server of its own on a free loopback
 * port (and stops it). Every run checks that the totals in Redis are exact.
 *
 * Run alone: `npx tsx bench/tokens.ts`.
 */
import { Effect, Layer, ManagedRuntime } from "effect"
import { Redis, type RedisOptions } from "ioredis"
import { pathToFileURL } from "node:url"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import { Callbacks, Dispatcher } from "../src/index.js"
import { type RedisProcess, startRedisProcess, stopRedisProcess } from "../test/support/globalSetup.js"

const cycle = "2025-03-01"
const users = 50

interface Workload {
  readonly userIds: ReadonlyArray<string>
  readonly prompt: ReadonlyArray<number>
  readonly completion: ReadonlyArray<number>
  readonly expectedTotal: number
}

// Deterministic token counts, so that every run can be checked exactly.
const makeWorkload = (records: number): Workload => {
  const userIds: Array<string> = []
  const prompt: Array<number> = []
  const completion: Array<number> = []
  let expectedTotal = 0
  for (let i = 0; i < records; i++) {
    userIds.push(`user-${i % users}`)
    prompt.push((i * 7919) % 3000)
    completion.push((i * 104729) % 900)
    expectedTotal += prompt[i]! + completion[i]!
  }
  return { userIds, prompt, completion, expectedTotal }
}

const connect = async (url: string, options: RedisOptions = {}): Promise<Redis> => {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, ...options })
  await redis.connect()
  return redis
}

const storedTotal = async (redis: Redis, keyPrefix: string): Promise<number> => {
  let total = 0
  for (let u = 0; u < users; u++) {
    total += Number(await redis.hget(RedisTokenStore.usageKey(keyPrefix, `user-${u}`, cycle), "total_tokens") ?? 0)
  }
  return total
}

const seconds = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e9

/** Instrumented calls, concurrently, through the token-usage handler over one Redis connection. */
const throughHandler = async (
  url: string,
  records: number,
  options: {
    readonly autoPipelining: boolean
    readonly maxConcurrent: number
    readonly concurrency: number
    readonly background?: boolean
  }
): Promise<{ readonly seconds: number; readonly exact: boolean }> => {
  const keyPrefix = `bench_tokens_${process.pid}_${Date.now().toString(36)}_${options.autoPipelining ? "ap" : "np"}`
  const redis = await connect(url, { enableAutoPipelining: options.autoPipelining, enableOfflineQueue: false })
  const runtime = ManagedRuntime.make(
    TokenUsage.layer(
      options.background === true
        ? { cycleStartDate: cycle, mode: "background", concurrency: 4 }
        : { cycleStartDate: cycle }
    ).pipe(
      Layer.provideMerge(
        Layer.merge(
          Dispatcher.layer({ maxConcurrent: options.maxConcurrent }),
          RedisTokenStore.layerClient(redis, { keyPrefix })
        )
      )
    )
  )
  try {
    const workload = makeWorkload(records)
    const run = (n: number, offset: number) =>
      runtime.runPromise(
        Effect.forEach(
          Array.from({ length: n }, (_, i) => i + offset),
          (i) =>
            Effect.succeed({
              content: "ok",
              usage: {
                promptTokens: workload.prompt[i % records]!,
                completionTokens: workload.completion[i % records]!,
                totalTokens: workload.prompt[i % records]! + workload.completion[i % records]!
              }
            }).pipe(
              Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: workload.userIds[i % records]! })
            ),
          { concurrency: options.concurrency, discard: true }
        ).pipe(Effect.zipRight(Dispatcher.flush))
      )
    // Build the layers before the clock starts.
    await runtime.runPromise(Effect.void)
    const start = process.hrtime.bigint()
    await run(records, 0)
    const elapsed = seconds(start)
    return { seconds: elapsed, exact: (await storedTotal(redis, keyPrefix)) === workload.expectedTotal }
  } finally {
    await runtime.dispose()
    await redis.quit().catch(() => redis.disconnect())
  }
}

const recordScript = `
if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
redis.call("HINCRBY", KEYS[1], "prompt_tokens", ARGV[2])
redis.call("HINCRBY", KEYS[1], "completion_tokens", ARGV[3])
redis.call("HINCRBY", KEYS[1], "total_tokens", ARGV[4])
redis.call("SET", KEYS[2], "1", "PX", ARGV[1])
return 1
`

/**
 * The ceiling on this machine: the same kind of Lua script straight from
 * ioredis promises, 1000 in flight, without Effect, dispatcher or validation.
 */
const rawScript = async (url: string, records: number): Promise<{ readonly seconds: number; readonly exact: boolean }> => {
  const keyPrefix = `bench_tokens_raw_${process.pid}_${Date.now().toString(36)}`
  const redis = await connect(url, { enableAutoPipelining: true })
  const scripted = redis as Redis & { benchRecord: (...args: ReadonlyArray<string | number>) => Promise<number> }
  redis.defineCommand("benchRecord", { numberOfKeys: 2, lua: recordScript })
  try {
    const workload = makeWorkload(records)
    const start = process.hrtime.bigint()
    for (let batch = 0; batch < records; batch += 1000) {
      const pending: Array<Promise<number>> = []
      for (let i = batch; i < Math.min(records, batch + 1000); i++) {
        const userId = workload.userIds[i]!
        pending.push(scripted.benchRecord(
          RedisTokenStore.usageKey(keyPrefix, userId, cycle),
          RedisTokenStore.callKey(keyPrefix, userId, `call-${i}`),
          86_400_000,
          workload.prompt[i]!,
          workload.completion[i]!,
          workload.prompt[i]! + workload.completion[i]!
        ))
      }
      await Promise.all(pending)
    }
    const elapsed = seconds(start)
    return { seconds: elapsed, exact: (await storedTotal(redis, keyPrefix)) === workload.expectedTotal }
  } finally {
    await redis.quit().catch(() => redis.disconnect())
  }
}

/** `TokenStore.record` of the Redis store, 100 in flight, without the dispatcher. */
const storeOnly = async (url: string, records: number): Promise<{ readonly seconds: number; readonly exact: boolean }> => {
  const keyPrefix = `bench_tokens_store_${process.pid}_${Date.now().toString(36)}`
  const redis = await connect(url, { enableAutoPipelining: true, enableOfflineQueue: false })
  try {
    const store = await Effect.runPromise(RedisTokenStore.fromClient(redis, { keyPrefix }))
    const workload = makeWorkload(records)
    const start = process.hrtime.bigint()
    await Effect.runPromise(Effect.forEach(
      Array.from({ length: records }, (_, i) => i),
      (i) =>
        store.record({
          callId: `call-${i}`,
          userId: workload.userIds[i]!,
          cycle,
          usage: {
            promptTokens: workload.prompt[i]!,
            completionTokens: workload.completion[i]!,
            totalTokens: workload.prompt[i]! + workload.completion[i]!
          }
        }),
      { concurrency: 100, discard: true }
    ))
    const elapsed = seconds(start)
    return { seconds: elapsed, exact: (await storedTotal(redis, keyPrefix)) === workload.expectedTotal }
  } finally {
    await redis.quit().catch(() => redis.disconnect())
  }
}

/** The Python design: `HINCRBY` per field, each awaited, one record at a time. */
const naive = async (url: string, records: number): Promise<{ readonly seconds: number; readonly exact: boolean }> => {
  const keyPrefix = `bench_tokens_naive_${process.pid}_${Date.now().toString(36)}`
  const redis = await connect(url)
  try {
    const workload = makeWorkload(records)
    const start = process.hrtime.bigint()
    for (let i = 0; i < records; i++) {
      const key = RedisTokenStore.usageKey(keyPrefix, workload.userIds[i]!, cycle)
      await redis.hincrby(key, "prompt_tokens", workload.prompt[i]!)
      await redis.hincrby(key, "completion_tokens", workload.completion[i]!)
      await redis.hincrby(key, "total_tokens", workload.prompt[i]! + workload.completion[i]!)
    }
    const elapsed = seconds(start)
    return { seconds: elapsed, exact: (await storedTotal(redis, keyPrefix)) === workload.expectedTotal }
  } finally {
    await redis.quit().catch(() => redis.disconnect())
  }
}

/** Rows of one table: records/s of each approach and its ratio to the naive one. */
export const run = async (): Promise<Array<Record<string, string | number>>> => {
  let server: RedisProcess | undefined
  const fromEnv = process.env["REDIS_URL"]
  const url = fromEnv !== undefined && fromEnv !== "" ? fromEnv : (server = await startRedisProcess()).url
  try {
    const naiveRecords = 10_000
    await naive(url, 2_000) // warm-up
    const baseline = await naive(url, naiveRecords)
    const baselineRate = naiveRecords / baseline.seconds
    const rows: Array<Record<string, string | number>> = [{
      approach: "naive: HINCRBY x3 per record, awaited one by one (Python design)",
      records: naiveRecords,
      "records/s": Math.round(baselineRate),
      "vs naive": "1.0x",
      exact: baseline.exact ? "yes" : "NO"
    }]
    const row = (approach: string, records: number, result: { readonly seconds: number; readonly exact: boolean }) => {
      const rate = records / result.seconds
      rows.push({
        approach,
        records,
        "records/s": Math.round(rate),
        "vs naive": `${(rate / baselineRate).toFixed(1)}x`,
        exact: result.exact ? "yes" : "NO"
      })
    }
    const handlerRecords = 50_000
    for (
      const variant of [
        { label: "handler: instrumented calls, await mode, store client without auto-pipelining", autoPipelining: false },
        { label: "handler: instrumented calls, await mode, auto-pipelining store client", autoPipelining: true },
        {
          label: "handler: instrumented calls, background mode (4 lanes, onLlmEndBatch -> recordMany), until flushed",
          autoPipelining: true,
          background: true
        }
      ]
    ) {
      const options = {
        autoPipelining: variant.autoPipelining,
        maxConcurrent: 100,
        concurrency: 100,
        background: variant.background === true
      }
      await throughHandler(url, 2_000, options) // warm-up
      row(`${variant.label} (1 connection, 100 calls in flight)`, handlerRecords, await throughHandler(url, handlerRecords, options))
    }
    await storeOnly(url, 5_000) // warm-up
    row("TokenStore.record alone (no dispatcher), auto-pipelining, 100 in flight", 50_000, await storeOnly(url, 50_000))
    await rawScript(url, 5_000) // warm-up
    row("ceiling: the Lua script from bare ioredis promises, auto-pipelining, 1000 in flight", 100_000, await rawScript(url, 100_000))
    return rows
  } finally {
    if (server !== undefined) await stopRedisProcess(server)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
