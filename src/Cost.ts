/**
 * Cost estimates from a price table.
 *
 * A price table gives, per model, the price of a million input, output and
 * cached input tokens. The table in force is the {@link CurrentPriceTable}
 * reference (empty by default); `instrument` reads it when a call ends and
 * sets `response.costEstimate` (in the table's currency) when the model is in
 * the table and the usage is known.
 *
 * Costs are computed exactly: a price per million tokens is a price in
 * micro-units per token, so the cost in micro-units is an integer token count
 * times a decimal price, summed as integers and rounded once (half up). The
 * estimate in currency units is that integer divided by 1,000,000, so
 * {@link microsOf} recovers it exactly.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { dual } from "effect/Function"
import type * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import type { LlmResponse, Usage } from "./Events.js"

/**
 * A price per million tokens: a non-negative, finite number.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Price = Schema.Number.pipe(
  Schema.finite(),
  Schema.nonNegative(),
  Schema.annotations({ identifier: "Price", description: "a non-negative, finite price per million tokens" })
)

/**
 * The prices of one model, per million tokens. `cachedInput` (input tokens
 * served from the provider's prompt cache) and `cacheWrite` (input tokens
 * written to it) default to `input`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ModelPrice = Schema.Struct({
  input: Price,
  output: Price,
  cachedInput: Schema.optional(Price),
  cacheWrite: Schema.optional(Price)
})

/**
 * @since 0.1.0
 * @category models
 */
export type ModelPrice = typeof ModelPrice.Type

/**
 * A price table as data: model name (non-empty) to prices.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Prices = Schema.Record({ key: Schema.NonEmptyTrimmedString, value: ModelPrice })

/**
 * @since 0.1.0
 * @category models
 */
export type Prices = typeof Prices.Type

/**
 * A validated price table, ready for exact cost computation.
 *
 * @since 0.1.0
 * @category models
 */
export interface PriceTable {
  readonly prices: Prices
  /** The exact prices of a model, or `undefined` when the table has none. */
  readonly lookup: (model: string) => ExactPrice | undefined
}

/**
 * A model's prices as decimal fractions `numerator / 10^scale`, in micro-units
 * per token (the same number as the price per million tokens).
 *
 * @since 0.1.0
 * @category models
 */
export interface ExactPrice {
  readonly input: Decimal
  readonly output: Decimal
  readonly cachedInput: Decimal
  readonly cacheWrite: Decimal
}

/**
 * A non-negative decimal `numerator / 10^scale`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Decimal {
  readonly numerator: bigint
  readonly scale: number
}

/**
 * The exact decimal written by the shortest representation of a finite,
 * non-negative number (`0.075` is 75 / 10^3, `1.5e-7` is 15 / 10^8).
 *
 * @since 0.1.0
 * @category constructors
 */
export const decimalOf = (value: number): Decimal => {
  const [mantissa, exponentPart] = String(value).toLowerCase().split("e") as [string, string | undefined]
  const [whole, fraction = ""] = mantissa.split(".") as [string, string | undefined]
  const exponent = exponentPart === undefined ? 0 : Number(exponentPart)
  let numerator = BigInt(whole + fraction)
  let scale = fraction.length - exponent
  if (scale < 0) {
    numerator = numerator * 10n ** BigInt(-scale)
    scale = 0
  }
  return { numerator, scale }
}

const makeTable = (prices: Prices): PriceTable => {
  const exact = new Map<string, ExactPrice>()
  for (const model of Object.keys(prices)) {
    const price = prices[model]!
    const input = decimalOf(price.input)
    exact.set(model, {
      input,
      output: decimalOf(price.output),
      cachedInput: price.cachedInput === undefined ? input : decimalOf(price.cachedInput),
      cacheWrite: price.cacheWrite === undefined ? input : decimalOf(price.cacheWrite)
    })
  }
  return { prices, lookup: (model) => exact.get(model) }
}

/**
 * The empty price table: no model has a price, no cost is estimated.
 *
 * @since 0.1.0
 * @category constructors
 */
export const empty: PriceTable = makeTable({})

const decodePrices = Schema.decodeUnknownEither(Prices, { errors: "all", onExcessProperty: "error" })

/**
 * Validates a price table given as data (e.g. parsed JSON).
 *
 * @since 0.1.0
 * @category constructors
 */
export const decode = (input: unknown): Either.Either<PriceTable, ParseResult.ParseError> =>
  Either.map(decodePrices(input), makeTable)

/**
 * The price table in force. `instrument` and `Callbacks.begin` read it when a
 * call ends; provide it with the `layers/Cost` layer or {@link withPriceTable}.
 *
 * @since 0.1.0
 * @category references
 */
export class CurrentPriceTable extends Context.Reference<CurrentPriceTable>()(
  "effect-llm-callbacks/Cost/CurrentPriceTable",
  { defaultValue: (): PriceTable => empty }
) {}

/**
 * Runs an effect with a price table in force.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withPriceTable: {
  (table: PriceTable): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, table: PriceTable): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, table: PriceTable): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentPriceTable, table)
)

const pow10 = (n: number): bigint => 10n ** BigInt(n)

/**
 * The exact cost of a usage at a model's prices, in integer micro-units,
 * rounded once for the whole call (half up), never per kind of token. Each
 * input token is priced once: cached ones (read from the prompt cache) at the
 * cached-input price, cache writes at the cache-write price, the rest at the
 * input price; reasoning tokens are output tokens.
 *
 * @since 0.1.0
 * @category computations
 */
export const micros = (
  price: ExactPrice,
  usage: Pick<Usage, "promptTokens" | "completionTokens" | "cachedTokens" | "cacheWriteTokens">
): number => {
  const cached = Math.min(usage.cachedTokens ?? 0, usage.promptTokens)
  const written = Math.min(usage.cacheWriteTokens ?? 0, usage.promptTokens - cached)
  const uncached = usage.promptTokens - cached - written
  const scale = Math.max(price.input.scale, price.output.scale, price.cachedInput.scale, price.cacheWrite.scale)
  // Fast path in doubles: every product and the sum are integers, exact as
  // long as the sum is a safe integer (the terms are non-negative).
  if (scale <= 15) {
    const termNumber = (tokens: number, decimal: Decimal): number =>
      tokens * Number(decimal.numerator) * 10 ** (scale - decimal.scale)
    const sum = termNumber(uncached, price.input) + termNumber(cached, price.cachedInput) +
      termNumber(written, price.cacheWrite) + termNumber(usage.completionTokens, price.output)
    if (Number.isSafeInteger(sum)) {
      const unit = 10 ** scale
      const rest = sum % unit
      const quotient = (sum - rest) / unit
      return 2 * rest >= unit ? quotient + 1 : quotient
    }
  }
  const term = (tokens: number, decimal: Decimal): bigint =>
    BigInt(tokens) * decimal.numerator * pow10(scale - decimal.scale)
  const total = term(uncached, price.input) + term(cached, price.cachedInput) + term(written, price.cacheWrite) +
    term(usage.completionTokens, price.output)
  const unit = pow10(scale)
  const quotient = total / unit
  return Number(2n * (total % unit) >= unit ? quotient + 1n : quotient)
}

/**
 * The cost of a usage for a model, in integer micro-units, or `undefined`
 * when the table has no price for the model.
 *
 * @since 0.1.0
 * @category computations
 */
export const microsFor = (
  table: PriceTable,
  model: string,
  usage: Pick<Usage, "promptTokens" | "completionTokens" | "cachedTokens" | "cacheWriteTokens">
): number | undefined => {
  const price = table.lookup(model)
  return price === undefined ? undefined : micros(price, usage)
}

/**
 * Micro-units in one currency unit.
 *
 * @since 0.1.0
 * @category constants
 */
export const MICROS_PER_UNIT = 1_000_000

/**
 * Converts an amount in currency units to integer micro-units (rounded to
 * the nearest).
 *
 * @since 0.1.0
 * @category conversions
 */
export const toMicros = (amount: number): number => Math.round(amount * MICROS_PER_UNIT)

/**
 * Converts integer micro-units to currency units.
 *
 * @since 0.1.0
 * @category conversions
 */
export const fromMicros = (micros: number): number => micros / MICROS_PER_UNIT

/**
 * The cost of an ended call in integer micro-units, from its
 * `response.costEstimate`, or `undefined` when it has none. For the token
 * handlers, which record it in the same atomic update as the tokens.
 *
 * @since 0.1.0
 * @category getters
 */
export const microsOf = (event: { readonly response: Pick<LlmResponse, "costEstimate"> }): number | undefined => {
  const estimate = event.response.costEstimate
  return estimate === undefined || !Number.isFinite(estimate) || estimate < 0 ? undefined : toMicros(estimate)
}

/**
 * The response with its cost estimate set from the table, when the table
 * prices the call's model (the requested model, else the one the response
 * names) and the usage is known. A response that already carries an estimate,
 * or cannot be priced, is returned as is.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withEstimate = (table: PriceTable, model: string, response: LlmResponse): LlmResponse => {
  if (response.usage === undefined || response.costEstimate !== undefined) return response
  const price = table.lookup(model) ?? (response.model === undefined ? undefined : table.lookup(response.model))
  if (price === undefined) return response
  return { ...response, costEstimate: fromMicros(micros(price, response.usage)) }
}

/**
 * Whether the table prices a call of `model` answered by `responseModel`.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isPriced = (table: PriceTable, model: string, responseModel?: string | undefined): boolean =>
  table.lookup(model) !== undefined || (responseModel !== undefined && table.lookup(responseModel) !== undefined)
