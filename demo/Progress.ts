/**
 * The demo's progress display: on a terminal, one line redrawn in place (`\r`); elsewhere (a pipe, a
 * log file, a test), a plain line at every tenth of the work.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"

/**
 * Counts of the calls done so far.
 *
 * @since 0.1.0
 * @category models
 */
export interface Counts {
  readonly done: number
  readonly ok: number
  readonly failed: number
}

/**
 * A running progress display.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  /** Counts one finished call. */
  readonly step: (ok: boolean) => Effect.Effect<void>
  /** Ends the display (a newline after a terminal bar). */
  readonly end: Effect.Effect<void>
  readonly counts: Effect.Effect<Counts>
}

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly total: number
  /** Redraw one line in place; default: whether stdout is a terminal. */
  readonly tty?: boolean | undefined
  readonly write?: ((text: string) => void) | undefined
  /** Width of the bar in characters. Default 30. */
  readonly width?: number | undefined
}

/**
 * The bar: `[#########.....] 120/200  ok 111  failed 9`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const render = (counts: Counts, total: number, width: number): string => {
  const filled = total === 0 ? width : Math.round((counts.done / total) * width)
  const bar = `${"#".repeat(filled)}${".".repeat(width - filled)}`
  const digits = String(total).length
  return `[${bar}] ${String(counts.done).padStart(digits)}/${total}  ok ${counts.ok}  failed ${counts.failed}`
}

/**
 * A plain progress line: `progress 40/200 (20%)  ok 37  failed 3`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const line = (counts: Counts, total: number): string =>
  `progress ${counts.done}/${total} (${total === 0 ? 100 : Math.floor((counts.done / total) * 100)}%)  ok ${counts.ok}  failed ${counts.failed}`

/**
 * Makes a progress display. A terminal bar is redrawn when its percentage changes, so a long run does
 * not flood the terminal.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<Progress> =>
  Effect.gen(function*() {
    const total = options.total
    const tty = options.tty ?? process.stdout.isTTY === true
    const write = options.write ?? ((text: string) => void process.stdout.write(text))
    const width = options.width ?? 30
    const state = yield* Ref.make<Counts>({ done: 0, ok: 0, failed: 0 })
    const tenth = (done: number) => Math.floor((done * 10) / Math.max(1, total))
    const percent = (done: number) => Math.floor((done * 100) / Math.max(1, total))
    if (tty) write(render({ done: 0, ok: 0, failed: 0 }, total, width))
    const step = (ok: boolean): Effect.Effect<void> =>
      Effect.flatMap(
        Ref.modify(state, (before) => {
          const after = {
            done: before.done + 1,
            ok: before.ok + (ok ? 1 : 0),
            failed: before.failed + (ok ? 0 : 1)
          }
          return [[before, after] as const, after]
        }),
        ([before, after]) =>
          Effect.sync(() => {
            if (tty) {
              if (percent(after.done) !== percent(before.done) || after.done === total) {
                write(`\r${render(after, total, width)}`)
              }
            } else if (tenth(after.done) !== tenth(before.done)) {
              write(`${line(after, total)}\n`)
            }
          })
      )
    return {
      step,
      end: Effect.sync(() => {
        if (tty) write("\n")
      }),
      counts: Ref.get(state)
    }
  })
