/**
 * Running a real implementation against a reference model on many random cases (the dispatcher's and
 * the stream chunks' comparisons): each case under a TestClock of its own, several at once (a TestClock's
 * adjust waits in real time for fibers to settle, which is what a case costs, not CPU); a failure names
 * the seed's variable, its value and the first differing cases.
 */
import { assert } from "@effect/vitest"
import { Effect, TestContext } from "effect"

export const compareCases = <C>(options: {
  readonly cases: ReadonlyArray<C>
  readonly compare: (c: C) => Effect.Effect<ReadonlyArray<string>, unknown>
  /** How to replay the run: `VARIABLE=value`. */
  readonly seed: string
  readonly concurrency: number
}) =>
  Effect.gen(function*() {
    const failures = yield* Effect.forEach(
      options.cases,
      (c, i) =>
        options.compare(c).pipe(
          Effect.provide(TestContext.TestContext),
          Effect.map((differences) => differences.length === 0 ? undefined : { i, c, differences })
        ),
      { concurrency: options.concurrency }
    )
    const failed = failures.filter((f) => f !== undefined)
    // A message, not a deep comparison: a diff of long strings would take the reporter minutes.
    if (failed.length > 0) {
      assert.fail(
        `${failed.length} of ${options.cases.length} cases differ (${options.seed}):\n` +
          failed.slice(0, 3).map((f) => `case ${f.i}: ${JSON.stringify(f.c)}\n  ${f.differences.join("\n  ")}`)
            .join("\n")
      )
    }
  })
