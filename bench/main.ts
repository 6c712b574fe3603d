/**
 * `npm run bench`: every benchmark of the project in one run, one summary
 * table at the end (ratios against each issue's anchor and target), the
 * detailed tables before it. Meant to finish within 5 minutes on 2 cores.
 *
 * Variants compared run side by side in one process, in interleaved rounds;
 * a timing is the median of the rounds (the minimum beside it where shown).
 * The throughput row runs in a process of its own (see `throughput.runIsolated`).
 */
import * as ai from "./ai.js"
import * as budget from "./budget.js"
import * as dispatch from "./dispatch.js"
import * as markers from "./markers.js"
import * as sqlStore from "./sql.js"
import * as memory from "./memory.js"
import * as stream from "./stream.js"
import * as throughput from "./throughput.js"
import * as tokens from "./tokens.js"
import type { Row } from "./common.js"

interface Summary {
  readonly benchmark: string
  readonly measured: string
  readonly anchor: string
  readonly ratio: string
  readonly target: string
  readonly met: "yes" | "no" | "-"
}

const summary: Array<Summary> = []
const started = Date.now()

const section = (title: string, rows: ReadonlyArray<Row>) => {
  console.log(`\n${title}`)
  console.table(rows)
}

const num = (row: Row | undefined, key: string): number => Number(row?.[key])

const main = async () => {
  // 1. Dispatch cost (issue: core runtime): no-op, synchronous, suspending, failing and background handlers.
  const dispatchRows = await dispatch.run({ rounds: 7 })
  section(
    "Per-call cost of instrument (start + end), N handlers, full policy: same loop for every variant, 7 interleaved rounds, median (and min)",
    dispatchRows
  )
  const targets: Record<string, { readonly langchain?: number; readonly hand?: number }> = {
    "no-op": { langchain: 1.0, hand: 2.0 },
    sync: {},
    suspend: { langchain: 4.0 },
    fail: { langchain: 4.0, hand: 1.0 },
    background: {}
  }
  for (const row of dispatchRows) {
    const kind = String(row.handlers).split(" ")[0]!
    const target = targets[kind] ?? {}
    summary.push({
      benchmark: `instrument, ${row.handlers} handler(s): ours vs LangChain CallbackManager`,
      measured: `${row["ours µs"]} µs`,
      anchor: `${row["langchain µs"]} µs`,
      ratio: String(row["ours/langchain"]),
      target: target.langchain === undefined ? "-" : `<= ${target.langchain}`,
      met: target.langchain === undefined ? "-" : num(row, "ours/langchain") <= target.langchain ? "yes" : "no"
    })
    summary.push({
      benchmark: `instrument, ${row.handlers} handler(s): ours vs hand-written Promise dispatcher`,
      measured: `${row["ours µs"]} µs`,
      anchor: `${row["hand-written µs"]} µs`,
      ratio: String(row["ours/hand"]),
      target: target.hand === undefined ? "-" : `<= ${target.hand}`,
      met: target.hand === undefined ? "-" : num(row, "ours/hand") <= target.hand ? "yes" : "no"
    })
  }

  // 2. Heap growth over 1,000,000 calls.
  const memoryRows = await memory.run(1_000_000)
  section("Heap growth over 1,000,000 instrumented calls (3 await + 1 background handler)", memoryRows)
  const growth = num(memoryRows[0], "growth MB")
  summary.push({
    benchmark: "heap growth over 1,000,000 calls after warm-up",
    measured: `${growth} MB`,
    anchor: `${memoryRows[0]?.["heap before MB"]} MB before`,
    ratio: "-",
    target: "no growth (< 2 MB)",
    met: growth < 2 ? "yes" : "no"
  })

  // 3. Throughput with 10,000 calls in flight, in a process of its own (see `runIsolated`).
  const throughputRows = await throughput.runIsolated(100_000, 10_000, 7)
  section("Throughput with 10,000 calls in flight (I/O-bound calls, 3 await + 1 background handler)", throughputRows)
  summary.push({
    benchmark: "throughput, 10,000 calls in flight",
    measured: `${throughputRows[0]?.["instrumented calls/s, median (best)"]} calls/s`,
    anchor: `${throughputRows[0]?.["langchain calls/s, median (best)"]} calls/s LangChain (bare: Effect ${
      throughputRows[0]?.["bare calls/s, median (best)"]
    }, promise ${throughputRows[0]?.["bare promise calls/s, median (best)"]}); added per call: ours ${
      throughputRows[0]?.["µs added per call, ours"]
    } µs, LangChain ${throughputRows[0]?.["µs added per call, langchain"]} µs`,
    ratio: `${throughputRows[0]?.["instrumented/langchain, medians"]} (best ${throughputRows[0]?.["instrumented/langchain, best"]})`,
    target: ">= 1.0 x LangChain (medians)",
    met: num(throughputRows[0], "instrumented/langchain, medians") >= 1 ? "yes" : "no"
  })

  // 4. Token records into Redis (issue: token accounting).
  const tokenRows = await tokens.run()
  section("Token records into Redis on loopback, one connection (totals checked exact)", tokenRows)
  const naive = tokenRows[0]
  const handler = tokenRows.filter((row) => String(row.approach).startsWith("handler"))
    .sort((a, b) => num(b, "records/s") - num(a, "records/s"))[0]
  if (naive !== undefined && handler !== undefined) {
    const ratio = num(handler, "records/s") / num(naive, "records/s")
    summary.push({
      benchmark: "token records/s through the handler vs naive HINCRBY",
      measured: `${handler["records/s"]} records/s`,
      anchor: `${naive["records/s"]} records/s`,
      ratio: ratio.toFixed(2),
      target: ">= 50,000/s and >= 3x",
      met: num(handler, "records/s") >= 50_000 && ratio >= 3 ? "yes" : "no"
    })
  }

  // 5. Budget reservations (issue: budgets).
  const budgetRows = await budget.run()
  section("Budget reservation cost per call, Redis on loopback, 100 calls in flight (interleaved rounds)", budgetRows)
  const added = budgetRows[2]
  summary.push({
    benchmark: "Budget.guard: extra script calls per call over plain recording",
    measured: `${added?.["script calls/call"]} (+${added?.["median µs/call"]} µs median)`,
    anchor: `${budgetRows[0]?.["median µs/call"]} µs/call record only`,
    ratio: "-",
    target: "<= 1 extra round trip",
    met: num(added, "script calls/call") <= 1.01 ? "yes" : "no"
  })

  // 6. @effect/ai layer overhead.
  const aiRows = await ai.run()
  section("@effect/ai layer overhead (token + GenAI metrics handlers on)", aiRows)
  const last = aiRows[aiRows.length - 1]
  const percent = Number.parseFloat(String(last?.["difference CPU µs"]))
  summary.push({
    benchmark: "@effect/ai layer overhead vs mock HTTP round trip",
    measured: `${last?.["difference µs"]} µs`,
    anchor: `${last?.["bare µs"]} µs round trip`,
    ratio: `${percent}%`,
    target: "< 5%",
    met: percent < 5 ? "yes" : "no"
  })

  // 7. Redis memory per recorded call (the idempotency marker).
  const markerRows = await markers.run()
  section("Redis memory per recorded call, INFO memory before and after 50,000 records", markerRows)
  for (const row of markerRows) {
    summary.push({
      benchmark: String(row.measure),
      measured: `${row["bytes/call"]} bytes`,
      anchor: "169 bytes (a key per call, before 0.3)",
      ratio: "-",
      target: "<= 64 bytes",
      met: num(row, "bytes/call") <= 64 ? "yes" : "no"
    })
  }

  // 7b. The SQL store: records per second, a ledger row and the counters per record.
  const sqlRows = await sqlStore.run()
  section("SQL token store: records per second (ledger row + counters per record), 100 in flight, 50 users", sqlRows)
  for (const row of sqlRows) {
    summary.push({
      benchmark: `SQL token store, ${row.store}`,
      measured: `${row["records/s"]} records/s`,
      anchor: "-",
      ratio: "-",
      target: "-",
      met: "-"
    })
  }

  // 8. Stream instrumentation overhead.
  const streamRows = await stream.run()
  section(
    "streamText on the fake model (60 text deltas), CPU µs per stream: bare vs instrumented, interleaved rounds",
    streamRows
  )
  for (const row of streamRows.slice(1)) {
    const overhead = Number.parseFloat(String(row.overhead))
    const target = row.variant === "handlers" ? 5 : 10
    summary.push({
      benchmark: `streamText instrumentation, ${row.variant}`,
      measured: `${row["CPU µs/stream (median)"]} µs`,
      anchor: `${streamRows[0]?.["CPU µs/stream (median)"]} µs bare`,
      ratio: `${overhead}%`,
      target: `<= ${target}%`,
      met: overhead <= target ? "yes" : "no"
    })
  }

  console.log(`\nSummary (${((Date.now() - started) / 1000).toFixed(0)} s, node ${process.version})`)
  console.table(summary)
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
