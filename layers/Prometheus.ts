/**
 * A Prometheus scrape endpoint for every Effect metric of the process: the
 * dispatcher's own metrics (`callback_executions_total`, ...), the GenAI
 * client metrics and the application's. Effect metrics reach the
 * `@opentelemetry/exporter-prometheus` reader through `@effect/opentelemetry`'s
 * metric producer; the exporter serves the text format.
 *
 * The layer is scoped: the server listens while the layer lives and is
 * closed (bounded by `shutdownTimeout`) when its scope closes. A port that
 * cannot be bound (already in use, forbidden) fails the layer with a
 * {@link PrometheusError} naming `host:port`.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher } from "effect-llm-callbacks"
 * import * as GenAiMetrics from "effect-llm-callbacks/layers/GenAiMetrics"
 * import * as Prometheus from "effect-llm-callbacks/layers/Prometheus"
 *
 * // scrape http://127.0.0.1:9464/metrics
 * const Observability = Layer.mergeAll(
 *   Prometheus.layer({ port: 9464 }),
 *   GenAiMetrics.layer().pipe(Layer.provideMerge(Dispatcher.layer()))
 * )
 * ```
 *
 * @since 0.1.0
 */
import * as Metrics from "@effect/opentelemetry/Metrics"
import * as Resource from "@effect/opentelemetry/Resource"
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus"
import type { MetricDescriptor, MetricProducer } from "@opentelemetry/sdk-metrics"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as CallbackMetrics from "../src/CallbackMetrics.js"
import * as GenAiMetrics from "./GenAiMetrics.js"

/**
 * The endpoint could not be served: `AddressInUse` when another process
 * holds the port, `ListenFailed` for any other reason the server could not
 * listen.
 *
 * @since 0.1.0
 * @category errors
 */
export class PrometheusError extends Schema.TaggedError<PrometheusError>("effect-llm-callbacks/PrometheusError")(
  "PrometheusError",
  {
    reason: Schema.Literal("AddressInUse", "ListenFailed"),
    host: Schema.String,
    port: Schema.Number,
    message: Schema.String
  }
) {}

/**
 * Options of the endpoint.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Interface to listen on. Default `127.0.0.1` (use `0.0.0.0` to expose it). */
  readonly host?: string | undefined
  /** Port, 1 to 65535. Default 9464, Prometheus' registered port for OpenTelemetry. */
  readonly port?: number | undefined
  /** Path of the metrics. Default `/metrics`. */
  readonly endpoint?: string | undefined
  /** `service.name` of the `target_info` series. Default `effect-llm-callbacks`. */
  readonly serviceName?: string | undefined
  /** Bound on closing the server when the layer's scope closes. Default 3 seconds. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /**
   * Units of the application's own metrics, by Effect metric name, exported
   * as `# UNIT` (the library's metrics have theirs: {@link defaultUnits}).
   */
  readonly units?: Readonly<Record<string, string>> | undefined
}

/**
 * Options with every default applied.
 *
 * @since 0.1.0
 * @category models
 */
export interface Resolved {
  readonly host: string
  readonly port: number
  readonly endpoint: string
  readonly serviceName: string
  readonly shutdownTimeout: Duration.Duration
  readonly units: Readonly<Record<string, string>>
}

/**
 * @since 0.1.0
 * @category constants
 */
export const defaults: Resolved = {
  host: "127.0.0.1",
  port: 9464,
  endpoint: "/metrics",
  serviceName: "effect-llm-callbacks",
  shutdownTimeout: Duration.seconds(3),
  units: {}
}

/**
 * The units of the library's metrics: the dispatcher's (`CallbackMetrics`)
 * and the GenAI ones (`GenAiMetrics`: `s`, `{token}`...). Metrics without a
 * unit are exported with `1`.
 *
 * @since 0.3.0
 * @category constants
 */
export const defaultUnits: Readonly<Record<string, string>> = { ...CallbackMetrics.units, ...GenAiMetrics.units }

const invalid = (name: string, value: unknown, expected: string) =>
  ConfigError.InvalidData([], `${name}: expected ${expected}, got ${JSON.stringify(value)}`)

const isPort = (port: number): boolean => Number.isSafeInteger(port) && port >= 1 && port <= 65535

/**
 * Checks options and fills in defaults; the error names the setting and its value.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (options: Options = {}): Either.Either<Resolved, ConfigError.ConfigError> => {
  const { endpoint, host, port, serviceName, shutdownTimeout, units } = options
  if (port !== undefined && !isPort(port)) return Either.left(invalid("port", port, "an integer from 1 to 65535"))
  if (host !== undefined && host.trim() === "") return Either.left(invalid("host", host, "a host name or address"))
  if (endpoint !== undefined && !endpoint.startsWith("/")) {
    return Either.left(invalid("endpoint", endpoint, "a path starting with /"))
  }
  if (serviceName !== undefined && serviceName.trim() === "") {
    return Either.left(invalid("serviceName", serviceName, "a non-empty name"))
  }
  let timeout = defaults.shutdownTimeout
  if (shutdownTimeout !== undefined) {
    const decoded = Duration.decodeUnknown(shutdownTimeout)
    if (decoded._tag === "None" || !Duration.isFinite(decoded.value)) {
      return Either.left(invalid("shutdownTimeout", shutdownTimeout, "a finite duration"))
    }
    timeout = decoded.value
  }
  return Either.right({
    host: host ?? defaults.host,
    port: port ?? defaults.port,
    endpoint: endpoint ?? defaults.endpoint,
    serviceName: serviceName ?? defaults.serviceName,
    shutdownTimeout: timeout,
    units: units ?? defaults.units
  })
}

/**
 * The endpoint's host and port from `CALLBACK_METRICS_HOST` and
 * `CALLBACK_METRICS_PORT`; a bad value fails naming the variable.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  host: Config.string("CALLBACK_METRICS_HOST").pipe(
    Config.mapOrFail((raw) =>
      raw.trim() === ""
        ? Either.left(ConfigError.InvalidData([], `expected a host name or address, got ${JSON.stringify(raw)}`))
        : Either.right(raw.trim())
    ),
    Config.withDefault(defaults.host)
  ),
  port: Config.port("CALLBACK_METRICS_PORT").pipe(
    Config.withDefault(defaults.port)
  )
})

/**
 * The producer with each metric's unit set from `units` (by Effect metric
 * name): Effect metrics carry none, and `@effect/opentelemetry` exports them
 * with `1`.
 */
const withUnits = (producer: MetricProducer, units: Readonly<Record<string, string>>): MetricProducer => ({
  collect: (options) =>
    producer.collect(options).then((result) => {
      for (const scope of result.resourceMetrics.scopeMetrics) {
        for (const metric of scope.metrics) {
          const unit = units[metric.descriptor.name]
          if (unit !== undefined) (metric as { descriptor: MetricDescriptor }).descriptor = { ...metric.descriptor, unit }
        }
      }
      return result
    })
})

const listenError = (options: Resolved, error: unknown): PrometheusError => {
  const code = typeof error === "object" && error !== null && "code" in error ? String(error.code) : undefined
  const message = error instanceof Error ? error.message : String(error)
  return new PrometheusError({
    reason: code === "EADDRINUSE" ? "AddressInUse" : "ListenFailed",
    host: options.host,
    port: options.port,
    message: code === "EADDRINUSE"
      ? `cannot serve metrics on ${options.host}:${options.port}: the address is already in use`
      : `cannot serve metrics on ${options.host}:${options.port}: ${message}`
  })
}

/**
 * Serves the metrics while the scope lives.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Resolved
): Effect.Effect<PrometheusExporter, PrometheusError, Resource.Resource | Scope.Scope> =>
  Effect.gen(function*() {
    // The exporter's own server is used, started here rather than in its
    // constructor: a failure to listen then fails this effect instead of
    // going only to the exporter's diagnostic log.
    const exporter = new PrometheusExporter({
      host: options.host,
      port: options.port,
      endpoint: options.endpoint,
      preventServerStart: true
    })
    const producer = withUnits(yield* Metrics.makeProducer, { ...defaultUnits, ...options.units })
    // Its finalizer shuts the exporter down (closing the server), bounded.
    yield* Effect.acquireRelease(
      Effect.sync(() => exporter.setMetricProducer(producer)),
      () =>
        Effect.promise(() => exporter.shutdown()).pipe(
          Effect.timeoutOption(options.shutdownTimeout),
          Effect.interruptible
        )
    )
    yield* Effect.tryPromise({ try: () => exporter.startServer(), catch: (error) => listenError(options, error) })
    yield* Effect.annotateLogs(
      Effect.logDebug(`serving metrics on http://${options.host}:${options.port}${options.endpoint}`),
      { host: options.host, port: options.port }
    )
    return exporter
  })

/**
 * The Prometheus endpoint with explicit options (unset ones take the defaults).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<never, PrometheusError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(resolve(options), layerResolved))

const layerResolved = (resolved: Resolved): Layer.Layer<never, PrometheusError> =>
  Layer.scopedDiscard(make(resolved)).pipe(Layer.provide(Resource.layer({ serviceName: resolved.serviceName })))

/**
 * The Prometheus endpoint configured from the environment
 * (`CALLBACK_METRICS_HOST`, `CALLBACK_METRICS_PORT`), or the given config.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config<Options> = config
): Layer.Layer<never, PrometheusError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.flatMap(options, (o) => Effect.map(resolve(o), layerResolved)))
