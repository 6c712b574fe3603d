/**
 * Settings of the dispatcher, with their environment names and defaults
 * (the Python design's `CallbackConfig`):
 *
 * | variable | default | meaning |
 * | --- | --- | --- |
 * | `CALLBACK_TIMEOUT` | 30 | seconds one handler invocation may take, retries included |
 * | `CALLBACK_MAX_CONCURRENT` | 100 | handler invocations in flight at once (those of calls made by hooks run past it) |
 * | `CALLBACK_MAX_RETRY_ATTEMPTS` | 3 | attempts in all (1 = no retry) |
 * | `CALLBACK_RETRY_DELAY` | 1 | seconds before the first retry, doubling after |
 * | `CALLBACK_ENABLE_RECOVERY` | true | false: no retries at all |
 * | `CALLBACK_MODE` | await | default mode of handlers that set none |
 * | `CALLBACK_SHUTDOWN_TIMEOUT` | 10 | seconds to drain background deliveries at shutdown |
 * | `CALLBACK_BUFFER_SIZE` | 16384 | background buffer per handler |
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import type { Mode } from "./Handler.js"

/**
 * Dispatcher options. Every field is optional; see the module docs for defaults.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly timeout?: Duration.DurationInput | undefined
  readonly maxConcurrent?: number | undefined
  readonly maxRetryAttempts?: number | undefined
  readonly retryDelay?: Duration.DurationInput | undefined
  readonly enableRecovery?: boolean | undefined
  readonly mode?: Mode | undefined
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  readonly bufferSize?: number | undefined
}

/**
 * Options with every default applied.
 *
 * @since 0.1.0
 * @category models
 */
export interface Resolved {
  readonly timeout: Duration.Duration
  readonly maxConcurrent: number
  readonly maxRetryAttempts: number
  readonly retryDelay: Duration.Duration
  readonly enableRecovery: boolean
  readonly mode: Mode
  readonly shutdownTimeout: Duration.Duration
  readonly bufferSize: number
}

/**
 * @since 0.1.0
 * @category constants
 */
export const defaults: Resolved = {
  timeout: Duration.seconds(30),
  maxConcurrent: 100,
  maxRetryAttempts: 3,
  retryDelay: Duration.seconds(1),
  enableRecovery: true,
  mode: "await",
  shutdownTimeout: Duration.seconds(10),
  bufferSize: 16_384
}

const invalid = (name: string, value: unknown, expected: string) =>
  ConfigError.InvalidData([], `${name}: expected ${expected}, got ${JSON.stringify(value)}`)

// Inside `Config.string(name)` the error's path already names the variable: the message names the value.
const invalidValue = (value: unknown, expected: string) =>
  ConfigError.InvalidData([], `expected ${expected}, got ${JSON.stringify(value)}`)

/**
 * Checks options and fills in defaults; the error names the setting and its value.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (options: Options = {}): Either.Either<Resolved, ConfigError.ConfigError> => {
  const duration = (name: string, input: Duration.DurationInput | undefined, fallback: Duration.Duration) => {
    if (input === undefined) return Either.right(fallback)
    const decoded = Duration.decodeUnknown(input)
    if (decoded._tag === "None" || !Duration.isFinite(decoded.value) || Duration.toMillis(decoded.value) < 0) {
      return Either.left(invalid(name, input, "a finite, non-negative duration"))
    }
    return Either.right(decoded.value)
  }
  const integer = (name: string, input: number | undefined, fallback: number, min: number) => {
    if (input === undefined) return Either.right(fallback)
    if (!Number.isSafeInteger(input) || input < min) {
      return Either.left(invalid(name, input, `an integer >= ${min}`))
    }
    return Either.right(input)
  }
  if (options.mode !== undefined && options.mode !== "await" && options.mode !== "background") {
    return Either.left(invalid("mode", options.mode, `"await" or "background"`))
  }
  return Either.all({
    timeout: duration("timeout", options.timeout, defaults.timeout),
    maxConcurrent: integer("maxConcurrent", options.maxConcurrent, defaults.maxConcurrent, 1),
    maxRetryAttempts: integer("maxRetryAttempts", options.maxRetryAttempts, defaults.maxRetryAttempts, 1),
    retryDelay: duration("retryDelay", options.retryDelay, defaults.retryDelay),
    enableRecovery: Either.right(options.enableRecovery ?? defaults.enableRecovery),
    mode: Either.right(options.mode ?? defaults.mode),
    shutdownTimeout: duration("shutdownTimeout", options.shutdownTimeout, defaults.shutdownTimeout),
    bufferSize: integer("bufferSize", options.bufferSize, defaults.bufferSize, 1)
  })
}

const seconds = (name: string, fallback: Duration.Duration) =>
  Config.string(name).pipe(
    Config.mapOrFail((raw) => {
      const value = Number(raw)
      return raw.trim() !== "" && Number.isFinite(value) && value >= 0
        ? Either.right(Duration.millis(Math.round(value * 1000)))
        : Either.left(invalidValue(raw, "a non-negative number of seconds"))
    }),
    Config.withDefault(fallback),
    Config.withDescription(`${name}, in seconds`)
  )

const integer = (name: string, fallback: number, min: number) =>
  Config.string(name).pipe(
    Config.mapOrFail((raw) => {
      const value = Number(raw)
      return raw.trim() !== "" && Number.isSafeInteger(value) && value >= min
        ? Either.right(value)
        : Either.left(invalidValue(raw, `an integer >= ${min}`))
    }),
    Config.withDefault(fallback)
  )

/**
 * The dispatcher settings read from the environment (`CALLBACK_*`).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Resolved> = Config.all({
  timeout: seconds("CALLBACK_TIMEOUT", defaults.timeout),
  maxConcurrent: integer("CALLBACK_MAX_CONCURRENT", defaults.maxConcurrent, 1),
  maxRetryAttempts: integer("CALLBACK_MAX_RETRY_ATTEMPTS", defaults.maxRetryAttempts, 1),
  retryDelay: seconds("CALLBACK_RETRY_DELAY", defaults.retryDelay),
  // true/false, yes/no, on/off, 1/0.
  enableRecovery: Config.boolean("CALLBACK_ENABLE_RECOVERY").pipe(Config.withDefault(defaults.enableRecovery)),
  mode: Config.string("CALLBACK_MODE").pipe(
    Config.mapOrFail((raw): Either.Either<Mode, ConfigError.ConfigError> =>
      raw === "await" || raw === "background"
        ? Either.right(raw)
        : Either.left(invalidValue(raw, `"await" or "background"`))
    ),
    Config.withDefault<Mode>(defaults.mode)
  ),
  shutdownTimeout: seconds("CALLBACK_SHUTDOWN_TIMEOUT", defaults.shutdownTimeout),
  bufferSize: integer("CALLBACK_BUFFER_SIZE", defaults.bufferSize, 1)
})
