/**
 * The dispatch benchmark's rows in machine instructions per call, counted by
 * valgrind's callgrind: a figure that does not move with the machine's load,
 * where the timed rows move by tenths of a ratio from run to run and by more
 * from day to day. It counts work, not time (a cache miss or a page fault
 * costs no more than an add), so it complements the timed rows, and settles
 * whether a change made a path do less.
 *
 * Each variant and configuration runs in a process of its own under
 * `valgrind --tool=callgrind`, twice: `warm` calls, then `warm + calls`
 * calls; the difference over `calls` is the count per call, without the
 * process's start, its module loading and the first calls' compilation.
 * Node runs with `--predictable`, fixed seeds and no incremental marking
 * (one thread: no concurrent compiler or collector). Counts still move
 * between identical runs. For the no-op rows, the totals of three runs of
 * 12,000 calls agree within 0.5%, and a count per call (a difference of two
 * runs) within about 2% (no-op x1, two repeats: 48,335-50,266). The suspend
 * rows, whose calls make the most garbage, are bimodal: most runs agree
 * within 0.5%, but about one in three lands about 9% higher (12,000 suspend
 * x1 calls: 5.83-5.87 or 6.35-6.36 billion instructions, for the same
 * build). Compare builds by several runs of each (`repeats`: the table gives
 * the median per call and the range).
 *
 * `node .tmp/bench-dist/bench/instructions.js [kinds] [sizes] [repeats]`,
 * after `npx tsc -p tsconfig.bench.json`: kinds default to `no-op,suspend`,
 * sizes to `1,3,10`, repeats to 1. 40-90 s per process; two run at once
 * (the counts do not depend on it). Not part of `npm run bench`; needs
 * `valgrind`.
 */
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { median, type Row } from "./common.js"
import { bare, handOne, instrumented, type Kind, langchainOne, type One, oursRuntime } from "./dispatch.js"

const variants = ["bare", "ours", "langchain", "hand-written"] as const
type Variant = typeof variants[number]

/**
 * Calls made before the count starts: at 2,000 the JIT was still compiling
 * ours (counted from 2,000, a suspend x3 call read 254,000 instructions;
 * from 12,000 and from 22,000, 122,000-127,000; LangChain's read within 2%
 * either way).
 */
const warm = 12_000
const calls = 10_000

/** In the worker process: `count` calls of one variant, one at a time. */
const worker = async (variant: Variant, kind: Kind, n: number, count: number): Promise<void> => {
  console.warn = () => {}
  console.error = () => {}
  const runtime = oursRuntime(kind, n)
  const one: One = variant === "bare"
    ? () => runtime.runPromise(bare)
    : variant === "ours"
    ? () => runtime.runPromise(instrumented)
    : variant === "langchain"
    ? langchainOne(kind, n)
    : handOne(kind, n)
  for (let i = 0; i < count; i++) await one()
  await runtime.dispose()
}

const run = promisify(execFile)

/** Instructions counted by callgrind in a worker making `count` calls. */
const instructions = async (variant: Variant, kind: Kind, n: number, count: number): Promise<number> => {
  const { stderr } = await run("valgrind", [
    "--tool=callgrind",
    "--callgrind-out-file=/dev/null",
    process.execPath,
    "--predictable",
    "--random-seed=1",
    "--hash-seed=1",
    "--no-incremental-marking",
    "--no-memory-reducer",
    fileURLToPath(import.meta.url),
    "--worker",
    variant,
    kind,
    String(n),
    String(count)
  ], { maxBuffer: 1 << 24 })
  const collected = /Collected : (\d+)/.exec(stderr)
  if (collected === null) throw new Error(`callgrind printed no count for ${variant} ${kind} x${n}:\n${stderr}`)
  return Number(collected[1])
}

/** Runs `jobs` two at a time, in order. */
const pooled = async <A>(jobs: ReadonlyArray<() => Promise<A>>, width = 2): Promise<Array<A>> => {
  const results = new Array<A>(jobs.length)
  let next = 0
  const lane = async () => {
    while (next < jobs.length) {
      const i = next++
      results[i] = await jobs[i]!()
    }
  }
  await Promise.all(Array.from({ length: width }, lane))
  return results
}

const main = async (kinds: ReadonlyArray<Kind>, sizes: ReadonlyArray<number>, repeats: number) => {
  const configs = kinds.flatMap((kind) => sizes.map((n) => ({ kind, n })))
  const pairs = configs.flatMap(({ kind, n }) => variants.map((variant) => ({ kind, n, variant })))
  const jobs = pairs.flatMap(({ kind, n, variant }) =>
    Array.from({ length: repeats }, () => [warm, warm + calls].map((count) => () => instructions(variant, kind, n, count)))
      .flat()
  )
  const counts = await pooled(jobs)
  /** Per call, each repeat: the difference of its two runs over `calls`. */
  const perCall = (kind: Kind, n: number, variant: Variant): ReadonlyArray<number> => {
    const at = pairs.findIndex((p) => p.kind === kind && p.n === n && p.variant === variant) * repeats * 2
    return Array.from({ length: repeats }, (_, r) => (counts[at + 2 * r + 1]! - counts[at + 2 * r]!) / calls)
  }
  const rows = configs.map(({ kind, n }) => {
    const row: Row = { handlers: `${kind} x${n}` }
    const medians = {} as Record<Variant, number>
    for (const variant of variants) {
      const values = perCall(kind, n, variant)
      medians[variant] = median(values)
      row[`${variant} instr/call`] = repeats === 1
        ? Math.round(medians[variant])
        : `${Math.round(medians[variant])} (${Math.round(Math.min(...values))}-${Math.round(Math.max(...values))})`
    }
    row["ours/langchain"] = +(medians.ours / medians.langchain).toFixed(3)
    row["ours/hand"] = +(medians.ours / medians["hand-written"]).toFixed(3)
    return row
  })
  console.table(rows)
}

const args = process.argv.slice(2)
if (args[0] === "--worker") {
  await worker(args[1] as Variant, args[2] as Kind, Number(args[3]), Number(args[4]))
} else {
  await main(
    (args[0] ?? "no-op,suspend").split(",") as ReadonlyArray<Kind>,
    (args[1] ?? "1,3,10").split(",").map(Number),
    Number(args[2] ?? 1)
  )
}
