/**
 * Billing cycles for token accounting.
 *
 * A cycle is identified by its start date, a UTC calendar date written
 * `YYYY-MM-DD`. Cycles are monthly: a cycle with anchor day `d` starts on day
 * `d` of a month and ends just before day `d` of the next month. The anchor day
 * is limited to 1..28 so that every month has it.
 *
 * The current cycle is computed from Effect's `Clock`, so `TestClock` moves it.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

const pattern = /^(\d{4})-(\d{2})-(\d{2})$/

const isLeapYear = (year: number): boolean => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0

const daysInMonth = (year: number, month: number): number =>
  month === 2 ? (isLeapYear(year) ? 29 : 28) : month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31

/**
 * Whether a string is a real calendar date written `YYYY-MM-DD`
 * (`2024-02-29` is, `2025-02-29` and `2025-02-30` are not).
 *
 * @since 0.1.0
 * @category guards
 */
export const isCycleDate = (u: unknown): u is string => {
  if (typeof u !== "string") return false
  const match = pattern.exec(u)
  if (match === null) return false
  const year = Number(match[1])
  const month = Number(match[2])
  const day = Number(match[3])
  return month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month)
}

/**
 * The start date of a billing cycle: a real UTC calendar date `YYYY-MM-DD`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const CycleDate = Schema.String.pipe(
  Schema.filter(isCycleDate, {
    message: (issue) => `Expected a real calendar date YYYY-MM-DD, got ${JSON.stringify(issue.actual)}`
  }),
  Schema.brand("CycleDate"),
  Schema.annotations({ identifier: "CycleDate", description: "A billing cycle start date, YYYY-MM-DD (UTC)" })
)

/**
 * The type of a validated cycle start date.
 *
 * @since 0.1.0
 * @category models
 */
export type CycleDate = typeof CycleDate.Type

/**
 * A string that is not a valid cycle start date.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidCycle extends Schema.TaggedError<InvalidCycle>("effect-llm-callbacks/InvalidCycle")(
  "InvalidCycle",
  { value: Schema.String }
) {
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `Invalid billing cycle start date ${JSON.stringify(this.value)}: expected a real calendar date YYYY-MM-DD`
  }
}

/**
 * Validates a cycle start date `YYYY-MM-DD`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromDate = (s: string): Effect.Effect<CycleDate, InvalidCycle> =>
  isCycleDate(s) ? Effect.succeed(s as CycleDate) : Effect.fail(new InvalidCycle({ value: String(s) }))

/**
 * Options of the computed billing cycle.
 *
 * @since 0.1.0
 * @category models
 */
export interface CycleOptions {
  /** Day of the month on which cycles start, an integer 1..28; default 1. */
  readonly anchorDay?: number | undefined
}

const pad = (n: number, width: number): string => String(n).padStart(width, "0")

const format = (year: number, month: number, day: number): CycleDate =>
  `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}` as CycleDate

/**
 * The start date of the cycle that contains an instant, for an anchor day.
 * An anchor day outside 1..28 is a defect: it is a programming or
 * configuration error, not something a caller can recover from per call.
 *
 * @since 0.1.0
 * @category constructors
 */
export const containing = (instant: DateTime.DateTime, options?: CycleOptions): Effect.Effect<CycleDate> => {
  const anchorDay = options?.anchorDay ?? 1
  if (!Number.isInteger(anchorDay) || anchorDay < 1 || anchorDay > 28) {
    return Effect.die(
      new Cause.IllegalArgumentException(
        `BillingCycle: anchorDay must be an integer from 1 to 28, got ${String(anchorDay)}`
      )
    )
  }
  const parts = DateTime.toPartsUtc(instant)
  if (parts.day >= anchorDay) {
    return Effect.succeed(format(parts.year, parts.month, anchorDay))
  }
  return Effect.succeed(
    parts.month === 1 ? format(parts.year - 1, 12, anchorDay) : format(parts.year, parts.month - 1, anchorDay)
  )
}

/**
 * The start date of the cycle containing now (Effect's `Clock`), monthly, UTC.
 * With `anchorDay: 15`, on March 3rd the cycle is the one that started on
 * February 15th. An anchor day outside 1..28 is a defect (see `containing`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const current = (options?: CycleOptions): Effect.Effect<CycleDate> =>
  Effect.flatMap(DateTime.now, (now) => containing(now, options))

/**
 * Options of `resolve`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ResolveOptions extends CycleOptions {
  /** An explicit cycle start date; when present it wins over the computed cycle. */
  readonly cycleStartDate?: string | undefined
}

/**
 * The explicit cycle start date when one is given (validated), else the
 * cycle containing now.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (options: ResolveOptions): Effect.Effect<CycleDate, InvalidCycle> =>
  options.cycleStartDate !== undefined ? fromDate(options.cycleStartDate) : current(options)
