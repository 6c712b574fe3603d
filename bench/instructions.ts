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
 * between identical runs, by the collections (and the last compilations)
 * that fall in the window: ours' no-op x1 read 32,097-35,309 instructions
 * per call in two runs of one build; its suspend x1 read 102,000-172,000
 * per call for one build (above its suspend x3 in the plain runs): its
 * window holds a full collection (of a 61 MB heap), suspend x3's none
 * (`--trace-gc`), and where a collection falls moves with the flags.
 * Compare builds by several runs of each
 * (`repeats`: the table gives the median per call and the range), over a
 * longer window (`window`, after `warm` calls: session 22's change read
 * higher than the old build over 10,000 calls from the 12,000th, a slow
 * stretch of its run falling there, and 18-39% lower over 40,000 from the
 * 22,000th), or by a profile's work outside the collector and the compiler.
 *
 * `node .tmp/bench-dist/bench/instructions.js [kinds] [sizes] [repeats] [variants] [warm] [window]`,
 * after `npx tsc -p tsconfig.bench.json`: kinds default to `no-op,suspend`,
 * sizes to `1,3,10`, repeats to 1, variants to all four (`ours` alone, to
 * compare builds of the library: no other variant's call runs its code),
 * warm to 12,000 calls and window to 10,000.
 * 1-4 minutes per process (43 minutes for the whole table, one repeat); two
 * run at once (the counts do not depend on it). Not part of `npm run bench`;
 * needs `valgrind`.
 */
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { median, type Row } from "./common.js"
import { bare, handOne, instrumented, type Kind, kinds, langchainOne, type One, oursRuntime } from "./dispatch.js"

const variants = ["bare", "ours", "langchain", "hand-written"] as const
type Variant = typeof variants[number]

/**
 * Calls made before the count starts: at 2,000 the JIT was still compiling
 * ours (counted from 2,000, a suspend x3 call read 254,000 instructions;
 * from 12,000 and from 22,000, 122,000-127,000). LangChain's moved less:
 * its suspend x10 read 89,770 from 2,000 and 91,368 from 12,000, its
 * suspend x3 51,237 and 44,115 (different runs and days).
 */
const defaultWarm = 12_000
const defaultWindow = 10_000

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

const main = async (
  kinds: ReadonlyArray<Kind>,
  sizes: ReadonlyArray<number>,
  repeats: number,
  counted: ReadonlyArray<Variant>,
  warm: number,
  calls: number
) => {
  const configs = kinds.flatMap((kind) => sizes.map((n) => ({ kind, n })))
  const pairs = configs.flatMap(({ kind, n }) => counted.map((variant) => ({ kind, n, variant })))
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
    const medians: Partial<Record<Variant, number>> = {}
    for (const variant of counted) {
      const values = perCall(kind, n, variant)
      const middle = median(values)
      medians[variant] = middle
      row[`${variant} instr/call`] = repeats === 1
        ? Math.round(middle)
        : `${Math.round(middle)} (${Math.round(Math.min(...values))}-${Math.round(Math.max(...values))})`
    }
    const ratio = (other: Variant) =>
      medians.ours === undefined || medians[other] === undefined ? undefined : +(medians.ours / medians[other]).toFixed(3)
    const toLangchain = ratio("langchain")
    const toHand = ratio("hand-written")
    if (toLangchain !== undefined) row["ours/langchain"] = toLangchain
    if (toHand !== undefined) row["ours/hand"] = toHand
    return row
  })
  console.table(rows)
}

/** The comma-separated names of `arg`, each one of `known` (else the process fails, naming it). */
const namesOf = <A extends string>(arg: string, what: string, known: ReadonlyArray<A>): ReadonlyArray<A> =>
  arg.split(",").map((name) => {
    if (!(known as ReadonlyArray<string>).includes(name)) {
      throw new Error(`instructions: unknown ${what} "${name}" (one of ${known.join(", ")})`)
    }
    return name as A
  })

/** The comma-separated positive whole numbers of `arg` (else the process fails, naming the one that is not). */
const countsOf = (arg: string, what: string): ReadonlyArray<number> =>
  arg.split(",").map((text) => {
    const n = Number(text)
    if (!Number.isInteger(n) || n < 1) throw new Error(`instructions: ${what} must be a positive whole number, got "${text}"`)
    return n
  })

const args = process.argv.slice(2)
if (args[0] === "--worker") {
  await worker(args[1] as Variant, args[2] as Kind, Number(args[3]), Number(args[4]))
} else {
  await main(
    namesOf(args[0] ?? "no-op,suspend", "kind", kinds),
    countsOf(args[1] ?? "1,3,10", "a size"),
    countsOf(args[2] ?? "1", "repeats")[0]!,
    namesOf(args[3] ?? variants.join(","), "variant", variants),
    countsOf(args[4] ?? String(defaultWarm), "warm")[0]!,
    countsOf(args[5] ?? String(defaultWindow), "window")[0]!
  )
}
