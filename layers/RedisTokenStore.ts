/**
 * A `TokenStore` kept in Redis (ioredis), shared by every process that uses
 * the same Redis and key prefix.
 *
 * Key layout (`<prefix>` defaults to `token_usage`):
 *
 * - `<prefix>:{<user>}:<cycle>`: a hash per user and billing cycle with the
 *   integer fields `prompt_tokens`, `completion_tokens`, `total_tokens`,
 *   `cost_micros` (when a cost was recorded) and `usage_limit` (when a limit is
 *   set);
 * - `<prefix>:{<user>}:call:<callId>`: the idempotency marker of a recorded
 *   call, expiring after the idempotency TTL (default 24 hours).
 *
 * This is the Python design's `token_usage:<user>:<cycle>` with the user in a
 * hash tag `{...}`, so that all keys of one user live in one Redis Cluster slot
 * and the record script may touch both of them. `<user>` and `<callId>` are
 * percent-encoded where they contain `%`, `:`, `{`, `}`, whitespace or
 * control characters (other characters, unicode included, are kept), so that
 * the encoding is injective and keys never collide (`a:b` vs `a`, `{x}` vs `x`).
 * The prefix may not contain `{` or `}`.
 *
 * Records are written by one Lua script: for each record, if the call's
 * marker exists it answers `"duplicate"`, else it increments the counters and
 * sets the marker, atomically; a stored counter that is not an integer fails
 * that record with nothing written. A retry after a lost reply therefore
 * counts once. Records issued in the same event-loop turn share one script
 * call (up to `batchSize`, default 256), which is what lets one connection
 * carry tens of thousands of records per second; each keeps its own outcome.
 *
 * Every command is bounded: ioredis' `commandTimeout` limits the wait for a
 * reply, the offline queue is disabled so a command sent while Redis is
 * unreachable fails at once, and ioredis reconnects in the background. Failures
 * surface as `TokenStoreError` with reason `Timeout` (no reply in time),
 * `Unavailable` (no connection) or `Unknown`.
 *
 * `users(cycle)` scans the keyspace (`SCAN MATCH <prefix>:{*}:<cycle>`); on a
 * Redis Cluster it sees the keys of the node the client is connected to only.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Tracer from "effect/Tracer"
import * as DefaultServices from "effect/DefaultServices"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { Redis, ReplyError } from "ioredis"
import * as TokenStore from "../src/TokenStore.js"

/**
 * Options of the Redis token store.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `redis://` or `rediss://` URL; default `redis://127.0.0.1:6379`. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** Prefix of every key; default `token_usage`. */
  readonly keyPrefix?: string | undefined
  /** Longest wait for a reply to a command; default 2 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** Longest wait for a connection to be established; default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** How long a recorded call id is remembered for idempotency; default 24 hours. */
  readonly idempotencyTtl?: Duration.DurationInput | undefined
  /** Longest wait for a graceful `QUIT` when the layer closes; default 2 seconds. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /**
   * Send the commands issued in one event-loop turn as one pipeline (ioredis
   * auto-pipelining); default true. Many concurrent records then share round
   * trips over the one connection.
   */
  readonly autoPipelining?: boolean | undefined
  /**
   * Most records sent in one script call (default 256). Records issued in
   * the same event-loop turn are batched; a batch spans users, which a single
   * Redis node allows (on a Redis Cluster, use 1: each user's keys share a
   * hash slot, different users' do not).
   */
  readonly batchSize?: number | undefined
}

/**
 * Options of a store built over an existing client.
 *
 * @since 0.1.0
 * @category models
 */
export type ClientOptions = Pick<Options, "keyPrefix" | "idempotencyTtl" | "batchSize">

const unsafeKeyChars = /[%:{}\s\p{Cc}]/gu

/**
 * Encodes a user or call id for use inside a key: `%`, `:`, `{`, `}`,
 * whitespace and control characters are percent-encoded (UTF-8), everything
 * else is kept. Injective on well-formed strings.
 *
 * @since 0.1.0
 * @category keys
 */
export const encodeKeyPart = (s: string): string => s.replace(unsafeKeyChars, encodeURIComponent)

/**
 * The inverse of `encodeKeyPart`; none when the string is not an encoding.
 *
 * @since 0.1.0
 * @category keys
 */
export const decodeKeyPart = (s: string): Option.Option<string> => {
  try {
    const decoded = decodeURIComponent(s)
    return encodeKeyPart(decoded) === s ? Option.some(decoded) : Option.none()
  } catch {
    return Option.none()
  }
}

/**
 * The key of the usage hash of a user and cycle.
 *
 * @since 0.1.0
 * @category keys
 */
export const usageKey = (prefix: string, userId: string, cycle: string): string =>
  `${prefix}:{${encodeKeyPart(userId)}}:${cycle}`

/**
 * The key of the idempotency marker of a user's call.
 *
 * @since 0.1.0
 * @category keys
 */
export const callKey = (prefix: string, userId: string, callId: string): string =>
  `${prefix}:{${encodeKeyPart(userId)}}:call:${encodeKeyPart(callId)}`

const escapeGlob = (s: string): string => s.replace(/[*?[\]\\]/g, "\\$&")

// A batch of records, one atomic script: KEYS are (usage hash, marker) pairs;
// ARGV[1] is the marker TTL (ms), then prompt, completion, total, cost per
// record. For each record: a marker present means a duplicate (0); a stored
// counter that is not an integer makes that record fail (-1) with nothing
// written, so its retry is neither lost nor counted twice; otherwise the
// counters move together and the marker is set (1).
const recordScript = `
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local usage = KEYS[2 * i - 1]
  local marker = KEYS[2 * i]
  local a = 2 + (i - 1) * 4
  if redis.call("EXISTS", marker) == 1 then
    out[i] = 0
  else
    local current = redis.call("HMGET", usage, "prompt_tokens", "completion_tokens", "total_tokens", "cost_micros")
    local ok = true
    for j = 1, 4 do
      local v = current[j]
      if v and not string.match(v, "^%-?%d+$") then ok = false end
    end
    if ok then
      redis.call("HINCRBY", usage, "prompt_tokens", ARGV[a])
      redis.call("HINCRBY", usage, "completion_tokens", ARGV[a + 1])
      redis.call("HINCRBY", usage, "total_tokens", ARGV[a + 2])
      if ARGV[a + 3] ~= "0" then redis.call("HINCRBY", usage, "cost_micros", ARGV[a + 3]) end
      redis.call("SET", marker, "1", "PX", ttl)
      out[i] = 1
    else
      out[i] = -1
    end
  end
end
return out
`

const recordCommand = "effectLlmCallbacksTokenStoreRecordV2"

interface RecordCommand {
  readonly [recordCommand]: (numberOfKeys: number, ...keysAndArgs: ReadonlyArray<string | number>) => Promise<
    ReadonlyArray<number>
  >
}

/** One record waiting for its batch. */
interface Queued {
  readonly input: TokenStore.RecordInput
  readonly complete: (result: Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>) => void
  cancelled: boolean
}


const unavailableReplies = /^(LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|READONLY)\b/

const toTokenStoreError = (method: string) => (cause: unknown): TokenStore.TokenStoreError => {
  const message = cause instanceof Error ? cause.message : String(cause)
  const reason = message === "Command timed out"
    ? "Timeout"
    : cause instanceof ReplyError
    ? (unavailableReplies.test(message) ? "Unavailable" : "Unknown")
    : "Unavailable"
  return new TokenStore.TokenStoreError({ reason, message: `RedisTokenStore.${method}: ${message}`, cause })
}

const nativeTracer: Tracer.Tracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

const tryRedis = <A>(method: string, f: () => Promise<A>): Effect.Effect<A, TokenStore.TokenStoreError> => {
  const command = Effect.tryPromise({ try: f, catch: toTokenStoreError(method) })
  const traced = Effect.withSpan(command, `RedisTokenStore.${method}`, {
    kind: "client",
    attributes: { "db.system": "redis" },
    // A stack trace per command is measurable on the recording hot path.
    captureStackTrace: false
  })
  // Effect's default tracer exports nowhere: a span there is pure cost.
  return Effect.withFiberRuntime((fiber) => fiber.currentTracer === nativeTracer ? command : traced)
}

const parseCount = (method: string, field: string, value: string | null | undefined) =>
  Effect.suspend(() => {
    if (value === null || value === undefined) return Effect.succeed(Option.none<number>())
    const n = Number(value)
    return Number.isSafeInteger(n)
      ? Effect.succeed(Option.some(n))
      : Effect.fail(
        new TokenStore.TokenStoreError({
          reason: "Unknown",
          message: `RedisTokenStore.${method}: field ${field} holds ${JSON.stringify(value)}, not an integer`
        })
      )
  })

const counterFields = ["prompt_tokens", "completion_tokens", "total_tokens", "cost_micros"] as const

const invalidOption = (name: string, message: string) => ConfigError.InvalidData([name], message)

const positiveMillis = (name: string, input: Duration.DurationInput) =>
  Effect.suspend(() => {
    const millis = Duration.toMillis(Duration.decode(input))
    return Number.isFinite(millis) && millis >= 1
      ? Effect.succeed(Math.round(millis))
      : Effect.fail(invalidOption(name, `Expected a finite duration of at least 1 millisecond`))
  })

const validatePrefix = (keyPrefix: string) =>
  keyPrefix.length > 0 && !/[{}]/.test(keyPrefix)
    ? Effect.succeed(keyPrefix)
    : Effect.fail(invalidOption("keyPrefix", `Expected a non-empty key prefix without "{" or "}"`))

/**
 * Whether a string is a Redis URL this layer accepts (`redis://` or `rediss://`).
 *
 * @since 0.1.0
 * @category guards
 */
export const isRedisUrl = (s: string): boolean => {
  try {
    const url = new URL(s)
    return (url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname.length > 0
  } catch {
    return false
  }
}

/**
 * Builds the store over a connected client. The client's lifetime is the
 * caller's; with `make` it is the scope's.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromClient = (
  redis: Redis,
  options?: ClientOptions
): Effect.Effect<TokenStore.Service, ConfigError.ConfigError> =>
  Effect.gen(function*() {
    const prefix = yield* validatePrefix(options?.keyPrefix ?? "token_usage")
    const ttlMillis = yield* positiveMillis("idempotencyTtl", options?.idempotencyTtl ?? Duration.hours(24))
    const batchSize = options?.batchSize ?? 256
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.fail(invalidOption("batchSize", `Expected an integer >= 1, got ${String(batchSize)}`))
    }
    redis.defineCommand(recordCommand, { lua: recordScript })
    const script = redis as unknown as RecordCommand

    // Records issued in the same event-loop turn go to Redis as one script
    // call: ioredis' cost per command is then paid once per batch. Each record
    // keeps its own outcome; a failed batch fails each of its records (their
    // retries are idempotent).
    let queue: Array<Queued> = []
    let scheduled = false
    const flush = () => {
      scheduled = false
      const batch = queue.length <= batchSize ? queue : queue.slice(0, batchSize)
      queue = queue.length <= batchSize ? [] : queue.slice(batchSize)
      if (queue.length > 0) schedule()
      const live = batch.filter((item) => !item.cancelled)
      if (live.length === 0) return
      const keys: Array<string> = []
      const args: Array<string | number> = [ttlMillis]
      for (const { input } of live) {
        keys.push(usageKey(prefix, input.userId, input.cycle), callKey(prefix, input.userId, input.callId))
        args.push(
          input.usage.promptTokens,
          input.usage.completionTokens,
          input.usage.totalTokens,
          input.costMicros ?? 0
        )
      }
      script[recordCommand](keys.length, ...keys, ...args).then(
        (outcomes) =>
          live.forEach((item, i) => {
            const outcome = outcomes[i]
            item.complete(
              outcome === 1
                ? Either.right("recorded")
                : outcome === 0
                ? Either.right("duplicate")
                : Either.left(
                  new TokenStore.TokenStoreError({
                    reason: "Unknown",
                    message: `RedisTokenStore.record: a stored counter of user ${
                      JSON.stringify(item.input.userId)
                    } in cycle ${item.input.cycle} is not an integer; nothing was recorded`
                  })
                )
            )
          }),
        (error) => {
          const failure = Either.left(toTokenStoreError("record")(error))
          for (const item of live) item.complete(failure)
        }
      )
    }
    const schedule = () => {
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    }
    const recordManyBatched = (inputs: ReadonlyArray<TokenStore.RecordInput>) =>
      Effect.async<ReadonlyArray<TokenStore.RecordOutcome>, TokenStore.TokenStoreError>((resume) => {
        const outcomes: Array<TokenStore.RecordOutcome> = new Array(inputs.length)
        let waiting = inputs.length
        let failed = false
        if (waiting === 0) return resume(Effect.succeed(outcomes))
        const items = inputs.map((input, i): Queued => ({
          input,
          cancelled: false,
          complete: (result) => {
            if (failed) return
            if (Either.isLeft(result)) {
              failed = true
              return resume(Effect.fail(result.left))
            }
            outcomes[i] = result.right
            if (--waiting === 0) resume(Effect.succeed(outcomes))
          }
        }))
        for (const item of items) queue.push(item)
        schedule()
        return Effect.sync(() => {
          for (const item of items) item.cancelled = true
        })
      })
    const recordBatched = (input: TokenStore.RecordInput) =>
      Effect.async<TokenStore.RecordOutcome, TokenStore.TokenStoreError>((resume) => {
        const item: Queued = { input, complete: (result) => resume(result), cancelled: false }
        queue.push(item)
        schedule()
        // Interrupted before its batch was sent: it is left out. Once sent it
        // may still be recorded; a retry with the same call id counts once.
        return Effect.sync(() => {
          item.cancelled = true
        })
      })

    const hmget = (method: string, userId: string, cycle: string, fields: ReadonlyArray<string>) =>
      tryRedis(method, () => redis.hmget(usageKey(prefix, userId, cycle), ...fields))

    const scanUsers = (cycle: string) => {
      const head = `${prefix}:{`
      const tail = `}:${cycle}`
      const pattern = `${escapeGlob(prefix)}:{*}:${cycle}`
      const found = new Set<string>()
      const loop = (cursor: string): Effect.Effect<ReadonlyArray<string>, TokenStore.TokenStoreError> =>
        Effect.flatMap(
          tryRedis("users", () => redis.scan(cursor, "MATCH", pattern, "COUNT", 1000)),
          ([next, keys]) => {
            for (const key of keys) {
              if (!key.startsWith(head) || !key.endsWith(tail)) continue
              const encoded = key.slice(head.length, key.length - tail.length)
              if (/[{}]/.test(encoded)) continue
              Option.map(decodeKeyPart(encoded), (user) => found.add(user))
            }
            return next === "0" ? Effect.sync(() => Array.from(found).sort()) : loop(next)
          }
        )
      return loop("0")
    }

    return TokenStore.withValidation({
      record: recordBatched,
      recordMany: recordManyBatched,
      stats: (userId, cycle) =>
        Effect.flatMap(
          hmget("stats", userId, cycle, [...counterFields, "usage_limit"]),
          ([prompt, completion, total, cost, limit]) =>
            Effect.all({
              promptTokens: parseCount("stats", "prompt_tokens", prompt).pipe(Effect.map(Option.getOrElse(() => 0))),
              completionTokens: parseCount("stats", "completion_tokens", completion).pipe(
                Effect.map(Option.getOrElse(() => 0))
              ),
              totalTokens: parseCount("stats", "total_tokens", total).pipe(Effect.map(Option.getOrElse(() => 0))),
              costMicros: parseCount("stats", "cost_micros", cost).pipe(Effect.map(Option.getOrElse(() => 0))),
              limit: parseCount("stats", "usage_limit", limit)
            })
        ),
      reset: (userId, cycle) =>
        Effect.asVoid(tryRedis("reset", () => redis.hdel(usageKey(prefix, userId, cycle), ...counterFields))),
      setLimit: (userId, cycle, limit) =>
        Effect.asVoid(tryRedis("setLimit", () => redis.hset(usageKey(prefix, userId, cycle), "usage_limit", limit))),
      checkLimit: (userId, cycle) =>
        Effect.flatMap(hmget("checkLimit", userId, cycle, ["total_tokens", "usage_limit"]), ([total, limit]) =>
          Effect.zipWith(
            parseCount("checkLimit", "total_tokens", total),
            parseCount("checkLimit", "usage_limit", limit),
            (total, limit) => TokenStore.makeLimitCheck(Option.getOrElse(total, () => 0), limit)
          )),
      users: scanUsers
    })
  })

/**
 * Connects to Redis and builds the store; the connection is closed (a bounded
 * `QUIT`, then a disconnect) when the scope closes. Fails with a `ConfigError`
 * naming a bad option, or a `TokenStoreError` when Redis cannot be reached.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options?: Options
): Effect.Effect<TokenStore.Service, ConfigError.ConfigError | TokenStore.TokenStoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const url = options?.url === undefined
      ? "redis://127.0.0.1:6379"
      : Redacted.isRedacted(options.url)
      ? Redacted.value(options.url)
      : options.url
    if (!isRedisUrl(url)) {
      // The URL may hold a password: it is not repeated in the message.
      return yield* Effect.fail(invalidOption("url", "Expected a redis:// or rediss:// URL with a host"))
    }
    const commandTimeout = yield* positiveMillis("commandTimeout", options?.commandTimeout ?? Duration.seconds(2))
    const connectTimeout = yield* positiveMillis("connectTimeout", options?.connectTimeout ?? Duration.seconds(5))
    const shutdownTimeout = options?.shutdownTimeout ?? Duration.seconds(2)
    const runtime = yield* Effect.runtime<never>()
    const logError = Runtime.runFork(runtime)

    const redis = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const redis = new Redis(url, {
          lazyConnect: true,
          commandTimeout,
          connectTimeout,
          // A command sent while disconnected fails at once instead of waiting
          // in a queue; one sent just before a disconnect is resent once after
          // the reconnect (harmless: records are idempotent), else it fails.
          enableOfflineQueue: false,
          enableAutoPipelining: options?.autoPipelining ?? true,
          maxRetriesPerRequest: 1,
          // Reconnect for ever, backing off up to one second.
          retryStrategy: (attempt) => Math.min(attempt * 100, 1000)
        })
        redis.on("error", (error: Error) =>
          logError(Effect.logDebug("RedisTokenStore: connection error", error.message)))
        return redis
      }),
      (redis) =>
        tryRedis("close", () => redis.quit()).pipe(
          Effect.timeout(shutdownTimeout),
          Effect.ignore,
          Effect.ensuring(Effect.sync(() => redis.disconnect()))
        )
    )
    yield* tryRedis("connect", () => redis.connect())
    return yield* fromClient(redis, options)
  })

/**
 * The Redis token store as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options?: Options
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, make(options))

/**
 * The Redis token store over a client owned by the caller (the layer does not
 * close it), e.g. to share one connection with other code.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClient = (
  redis: Redis,
  options?: ClientOptions
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError> =>
  Layer.effect(TokenStore.TokenStore, fromClient(redis, options))

/**
 * The options read from the environment: `REDIS_URL` (required, redacted,
 * `redis://` or `rediss://`), `REDIS_KEY_PREFIX` (default `token_usage`),
 * `REDIS_COMMAND_TIMEOUT` and `REDIS_IDEMPOTENCY_TTL` (durations, optional).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  // Validated inside `nested` so that the error names the variable.
  url: Config.redacted().pipe(
    Config.validate({
      message: "Expected a redis:// or rediss:// URL with a host",
      validation: (url) => isRedisUrl(Redacted.value(url))
    }),
    Config.nested("REDIS_URL")
  ),
  keyPrefix: Config.string().pipe(
    Config.validate({
      message: `Expected a non-empty key prefix without "{" or "}"`,
      validation: (prefix) => prefix.length > 0 && !/[{}]/.test(prefix)
    }),
    Config.nested("REDIS_KEY_PREFIX"),
    Config.withDefault("token_usage")
  ),
  commandTimeout: Config.option(Config.duration("REDIS_COMMAND_TIMEOUT")).pipe(Config.map(Option.getOrUndefined)),
  idempotencyTtl: Config.option(Config.duration("REDIS_IDEMPOTENCY_TTL")).pipe(Config.map(Option.getOrUndefined))
})

/**
 * The Redis token store with options read from `Config` (by default `config`,
 * from the environment). A bad setting fails the layer with a `ConfigError`
 * naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, Effect.flatMap(Config.unwrap(options), make))
