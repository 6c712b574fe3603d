/**
 * Cost tracking: puts a price table in force, so that every instrumented call
 * that ends with a known usage of a priced model carries
 * `response.costEstimate`, and registers a handler that logs, once per model,
 * the calls whose model has no price.
 *
 * Cost per user and billing cycle is accumulated by the token-usage handler,
 * which records `Cost.microsOf(event)` (integer micro-units) in the same
 * atomic TokenStore update as the tokens; this layer never writes to the
 * TokenStore itself, so a call's tokens and cost cannot be counted apart.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher } from "effect-llm-callbacks"
 * import * as CostLayer from "effect-llm-callbacks/layers/Cost"
 *
 * const Callbacks = CostLayer.layer({
 *   prices: {
 *     "gpt-4o-mini": { input: 0.15, output: 0.6, cachedInput: 0.075 },
 *     "gpt-4o": { input: 2.5, output: 10 }
 *   }
 * }).pipe(Layer.provideMerge(Dispatcher.layer()))
 * ```
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as Cost from "../src/Cost.js"
import * as Dispatcher from "../src/Dispatcher.js"
import type { EndEvent } from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import type { HandlerRegistrationError } from "../src/HandlerError.js"

/**
 * Options of the cost layer.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Model name to prices per million tokens (`input`, `output`, optional `cachedInput`). */
  readonly prices: Cost.Prices
  /** Handler name, default `"cost"`. */
  readonly name?: string | undefined
  /** Most distinct unknown models remembered (each is logged once). Default 1000. */
  readonly maxUnknownModels?: number | undefined
}

/**
 * The environment variable holding the price table as JSON, e.g.
 * `{"gpt-4o-mini":{"input":0.15,"output":0.6,"cachedInput":0.075}}`.
 *
 * @since 0.1.0
 * @category config
 */
export const PRICE_TABLE_VARIABLE = "CALLBACK_PRICE_TABLE"

const invalid = (name: string, message: string) => ConfigError.InvalidData([], `${name}: ${message}`)

// One line per issue, with its path: `["gpt-4o"].input: Expected ..., actual -1`.
const formatIssue = (error: ParseResult.ParseError): string =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) =>
      issue.path.length === 0
        ? issue.message
        : `${issue.path.map((key) => `[${JSON.stringify(key)}]`).join("")}: ${issue.message}`
    )
    .join("; ")

/**
 * Validates a price table given as data; the error names `setting` (an
 * option or variable name) and what is wrong with it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const decodePrices = (
  setting: string,
  input: unknown
): Either.Either<Cost.PriceTable, ConfigError.ConfigError> =>
  Either.mapLeft(Cost.decode(input), (error) => invalid(setting, formatIssue(error)))

const decodeJson = Schema.decodeUnknownEither(Schema.parseJson(Schema.Unknown))

/**
 * The price table read from `CALLBACK_PRICE_TABLE` (JSON); empty when unset.
 * Malformed JSON or a bad price fails with a `ConfigError` naming the variable.
 *
 * @since 0.1.0
 * @category config
 */
export const priceTableConfig: Config.Config<Cost.PriceTable> = Config.string(PRICE_TABLE_VARIABLE).pipe(
  Config.mapOrFail((raw) =>
    Either.flatMap(
      // The path of the error names the variable; the message names the value.
      Either.mapLeft(
        decodeJson(raw),
        (error) =>
          ConfigError.InvalidData([], `expected JSON, got ${JSON.stringify(raw.length > 80 ? `${raw.slice(0, 77)}...` : raw)}: ${formatIssue(error)}`)
      ),
      (json) => Either.mapLeft(Cost.decode(json), (error) => ConfigError.InvalidData([], formatIssue(error)))
    )
  ),
  Config.withDefault(Cost.empty),
  Config.withDescription("price table (JSON: model -> { input, output, cachedInput? } per million tokens)")
)

/**
 * A handler that logs a warning the first time a call of a model without a
 * price ends with a known usage (at most `maxUnknownModels` models are
 * remembered; after that, one more warning says so and the rest are quiet).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeHandler = (
  table: Cost.PriceTable,
  options: { readonly name?: string | undefined; readonly maxUnknownModels?: number | undefined } = {}
): Handler.Handler => {
  const limit = options.maxUnknownModels ?? 1000
  const seen = new Set<string>()
  let full = false
  const onLlmEnd = (event: EndEvent): Effect.Effect<void> => {
    const response = event.response
    if (
      response.usage === undefined || response.costEstimate !== undefined ||
      Cost.isPriced(table, event.call.model, response.model)
    ) return Effect.void
    const model = event.call.model
    if (seen.has(model) || full) return Effect.void
    if (seen.size >= limit) {
      full = true
      return Effect.logWarning(`cost: more than ${limit} models without a price; no further warnings`)
    }
    seen.add(model)
    return Effect.logWarning(`cost: no price for model ${model}; its calls carry no cost estimate`).pipe(
      Effect.annotateLogs({ model, provider: event.call.provider })
    )
  }
  return Handler.make({ name: options.name ?? "cost", onLlmEnd })
}

const checkOptions = (options: Options): Either.Either<Cost.PriceTable, ConfigError.ConfigError> => {
  const limit = options.maxUnknownModels
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1)) {
    return Either.left(invalid("maxUnknownModels", `expected an integer >= 1, got ${JSON.stringify(limit)}`))
  }
  return decodePrices("prices", options.prices)
}

/**
 * Builds the layer from a validated table.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTable = (
  table: Cost.PriceTable,
  options: { readonly name?: string | undefined; readonly maxUnknownModels?: number | undefined } = {}
): Layer.Layer<Cost.CurrentPriceTable, HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.merge(Layer.succeed(Cost.CurrentPriceTable, table), Dispatcher.toLayer(makeHandler(table, options)))

/**
 * Puts the price table in force for everything the layer is provided to,
 * and registers the unknown-model handler. A bad price table fails the layer
 * with a `ConfigError` naming `prices`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options
): Layer.Layer<Cost.CurrentPriceTable, ConfigError.ConfigError | HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.unwrapEffect(Effect.map(checkOptions(options), (table) => layerTable(table, options)))

/**
 * The cost layer with the price table from `CALLBACK_PRICE_TABLE` (or the
 * given config).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config<Cost.PriceTable> = priceTableConfig
): Layer.Layer<Cost.CurrentPriceTable, ConfigError.ConfigError | HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.unwrapEffect(Effect.map(config, (table) => layerTable(table)))

/**
 * The cost of an ended call in integer micro-units (from its
 * `response.costEstimate`), or `undefined`: what a token-usage handler records
 * as `costMicros` in the same TokenStore update as the tokens. Same as
 * `Cost.microsOf` in the core.
 *
 * @since 0.1.0
 * @category getters
 */
export const microsOf: (event: EndEvent) => number | undefined = Cost.microsOf

/**
 * Currency units to integer micro-units (rounded to the nearest).
 *
 * @since 0.1.0
 * @category conversions
 */
export const toMicros: (amount: number) => number = Cost.toMicros

/**
 * Integer micro-units to currency units.
 *
 * @since 0.1.0
 * @category conversions
 */
export const fromMicros: (micros: number) => number = Cost.fromMicros
