/**
 * A process recording into the SQL token store, for the two-process test in
 * test/layers/SqlTokenStore.test.ts: calls `<prefix>-call-<i>` for i in
 * [0, count), in the given order, 16 at once, through `SqlTokenStore`, user
 * `<prefix>-u<i mod 5>`, usage a function of i. It prints one JSON line with
 * its outcomes (`{ recorded, duplicate }`) and exits.
 *
 * Arguments: `<pg|sqlite> <url or file> <prefix> <count> <forward|reverse>`.
 */
import { Effect, Layer, Redacted } from "effect"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import { TokenStore } from "../../src/index.js"

const [kind, where, prefix, count, order] = process.argv.slice(2) as [string, string, string, string, string]

/** The usage of call i (the test sums the same function). */
export const usageOf = (i: number) => ({ promptTokens: 10 + (i % 13), completionTokens: 1 + (i % 7) })

const store = kind === "pg"
  ? SqlTokenStore.layerPg({ url: Redacted.make(where) })
  : SqlTokenStore.layerSqlite({ filename: where })

const indices = Array.from({ length: Number(count) }, (_, i) => i)
if (order === "reverse") indices.reverse()

const program = Effect.gen(function*() {
  const tokens = yield* TokenStore.TokenStore
  const outcomes = yield* Effect.forEach(indices, (i) => {
    const usage = usageOf(i)
    return tokens.record({
      callId: `${prefix}-call-${i}`,
      userId: `${prefix}-u${i % 5}`,
      cycle: "2026-12-01",
      usage: { ...usage, totalTokens: usage.promptTokens + usage.completionTokens }
    })
  }, { concurrency: 16 })
  const counts = { recorded: 0, duplicate: 0 }
  for (const outcome of outcomes) if (outcome === "recorded" || outcome === "duplicate") counts[outcome]++
  process.stdout.write(`${JSON.stringify(counts)}\n`)
})

Effect.runPromise(program.pipe(Effect.provide(store as Layer.Layer<TokenStore.TokenStore, unknown>))).then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${String(error)}\n`)
    process.exit(1)
  }
)
