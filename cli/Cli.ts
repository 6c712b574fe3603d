/**
 * The `effect-llm-callbacks` command line: reads and administers the token
 * store kept in Redis (`layers/RedisTokenStore.ts`) or in a SQL database
 * (`layers/SqlTokenStore.ts`: PostgreSQL or SQLite), and reads the SQL
 * store's ledger.
 *
 * - `usage [--redis URL | --redis-cluster NODES | --database URL] [--user ID] [--cycle YYYY-MM-DD] [--json] [--key-prefix P]`
 *   prints per-user usage and limits of a billing cycle, as a table or JSON;
 * - `set-limit --user ID --limit N [--cycle YYYY-MM-DD]` sets a user's limit;
 * - `reset --user ID [--cycle YYYY-MM-DD]` clears a user's usage (the limit stays);
 * - `ledger --database URL [--user ID] [--cycle YYYY-MM-DD] [--json] [--max-rows N]`
 *   prints the recorded calls of a cycle, one per line, and their sums.
 *
 * The store: `--redis URL` (else `REDIS_URL`), `--redis-cluster NODES` (a
 * Redis Cluster, some of its nodes comma-separated; else
 * `REDIS_CLUSTER_NODES`) or `--database URL` (else `DATABASE_URL`),
 * `postgres://...` or `sqlite:FILE`; an explicit flag wins, then `REDIS_URL`,
 * then `REDIS_CLUSTER_NODES`, then `DATABASE_URL`. The key prefix (Redis) comes from
 * `--key-prefix`, else `REDIS_KEY_PREFIX`, else `token_usage`. The cycle
 * defaults to the current monthly cycle (UTC, starting on the 1st).
 *
 * @since 0.1.0
 */
import type * as CliApp from "@effect/cli/CliApp"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as Usage from "@effect/cli/Usage"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import type * as SqlTokenStore from "../layers/SqlTokenStore.js"
import * as BillingCycle from "../src/BillingCycle.js"
import * as TokenStore from "../src/TokenStore.js"

// -----------------------------------------------------------------------------
// Rows and formatting
// -----------------------------------------------------------------------------

/**
 * The usage of one user in one cycle, as the `usage` command reports it.
 *
 * @since 0.1.0
 * @category models
 */
export interface UsageRow {
  readonly user: string
  readonly cycle: string
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  /** Input tokens read from the prompt cache (part of `promptTokens`). */
  readonly cachedTokens: number
  /** Input tokens written to the prompt cache (part of `promptTokens`). */
  readonly cacheWriteTokens: number
  /** Reasoning tokens (part of `completionTokens`). */
  readonly reasoningTokens: number
  /** Tokens of calls whose usage was estimated with a tokenizer (part of `totalTokens`). */
  readonly estimatedTokens: number
  /** Accumulated cost in millionths of the currency unit. */
  readonly costMicros: number
  readonly limit: Option.Option<number>
  readonly remaining: Option.Option<number>
  readonly exceeded: boolean
}

/**
 * The row of a user from its stats; limit, remaining and exceeded follow
 * `TokenStore.makeLimitCheck`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRow = (user: string, cycle: string, stats: TokenStore.UsageStats): UsageRow => {
  const check = TokenStore.makeLimitCheck(stats.totalTokens, stats.limit)
  return {
    user,
    cycle,
    promptTokens: stats.promptTokens,
    completionTokens: stats.completionTokens,
    totalTokens: stats.totalTokens,
    cachedTokens: stats.cachedTokens,
    cacheWriteTokens: stats.cacheWriteTokens,
    reasoningTokens: stats.reasoningTokens,
    estimatedTokens: stats.estimatedTokens,
    costMicros: stats.costMicros,
    limit: check.limit,
    remaining: check.remaining,
    exceeded: check.exceeded
  }
}

/**
 * A cost in micros as a decimal with six fixed decimals (`1234567` is
 * `"1.234567"`), computed on integers so that no floating-point rounding
 * shows.
 *
 * @since 0.1.0
 * @category formatting
 */
export const formatCost = (costMicros: number): string => {
  const sign = costMicros < 0 ? "-" : ""
  const micros = Math.abs(costMicros)
  return `${sign}${Math.floor(micros / 1_000_000)}.${String(micros % 1_000_000).padStart(6, "0")}`
}

const tableColumns = [
  "user",
  "prompt",
  "cached",
  "cache_write",
  "completion",
  "reasoning",
  "total",
  "estimated",
  "cost",
  "limit",
  "remaining",
  "exceeded"
] as const

const orDash = (value: Option.Option<number>): string => Option.match(value, { onNone: () => "-", onSome: String })

/**
 * The rows as a plain-text table with a header line; numbers are right
 * aligned, a missing limit or remaining is `-`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const formatTable = (rows: ReadonlyArray<UsageRow>): string => {
  const cells = rows.map((row) => [
    row.user,
    String(row.promptTokens),
    String(row.cachedTokens),
    String(row.cacheWriteTokens),
    String(row.completionTokens),
    String(row.reasoningTokens),
    String(row.totalTokens),
    String(row.estimatedTokens),
    formatCost(row.costMicros),
    orDash(row.limit),
    orDash(row.remaining),
    row.exceeded ? "yes" : "no"
  ])
  return renderTable(tableColumns, cells, 1).join("\n")
}

/**
 * The header and the rows, each a line: columns two spaces apart, the first
 * `textColumns` left aligned, the others (numbers) right aligned.
 */
const renderTable = (
  headers: ReadonlyArray<string>,
  cells: ReadonlyArray<ReadonlyArray<string>>,
  textColumns: number
): Array<string> => {
  const widths = headers.map((header, i) => Math.max(header.length, ...cells.map((line) => line[i]!.length)))
  const render = (line: ReadonlyArray<string>) =>
    line.map((cell, i) => (i < textColumns ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ").trimEnd()
  return [render(headers), ...cells.map(render)]
}

/**
 * The rows as JSON: an array of objects with `user`, `cycle`, `promptTokens`,
 * `completionTokens`, `totalTokens`, `cachedTokens`, `cacheWriteTokens`,
 * `reasoningTokens`, `estimatedTokens`, `costMicros`, `cost` (a decimal string),
 * `limit` and `remaining` (`null` without a limit) and `exceeded`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const formatJson = (rows: ReadonlyArray<UsageRow>): string =>
  JSON.stringify(
    rows.map((row) => ({
      user: row.user,
      cycle: row.cycle,
      promptTokens: row.promptTokens,
      completionTokens: row.completionTokens,
      totalTokens: row.totalTokens,
      cachedTokens: row.cachedTokens,
      cacheWriteTokens: row.cacheWriteTokens,
      reasoningTokens: row.reasoningTokens,
      estimatedTokens: row.estimatedTokens,
      costMicros: row.costMicros,
      cost: formatCost(row.costMicros),
      limit: Option.getOrNull(row.limit),
      remaining: Option.getOrNull(row.remaining),
      exceeded: row.exceeded
    })),
    null,
    2
  )

const ledgerColumns = [
  "recorded_at",
  "user",
  "call",
  "provider",
  "model",
  "prompt",
  "cached",
  "cache_write",
  "completion",
  "reasoning",
  "total",
  "estimated",
  "cost"
] as const

/**
 * Ledger rows as a plain-text table (numbers right aligned), then a line with
 * the number of calls and the sums of tokens and cost.
 *
 * @since 0.3.0
 * @category formatting
 */
export const formatLedgerTable = (rows: ReadonlyArray<SqlTokenStore.LedgerRow>): string => {
  const cells = rows.map((row) => [
    new Date(row.recordedAt).toISOString(),
    row.userId,
    row.callId,
    row.provider ?? "-",
    row.model ?? "-",
    String(row.promptTokens),
    String(row.cachedTokens),
    String(row.cacheWriteTokens),
    String(row.completionTokens),
    String(row.reasoningTokens),
    String(row.totalTokens),
    row.estimated ? "yes" : "no",
    formatCost(row.costMicros)
  ])
  const sum = (f: (row: SqlTokenStore.LedgerRow) => number) => rows.reduce((n, row) => n + f(row), 0)
  const footer = `${rows.length} calls, ${sum((row) => row.totalTokens)} tokens (${
    sum((row) => row.promptTokens)
  } prompt, ${sum((row) => row.completionTokens)} completion), cost ${formatCost(sum((row) => row.costMicros))}`
  return [...renderTable(ledgerColumns, cells, 5), footer].join("\n")
}

/**
 * Ledger rows as JSON: an array of the rows' fields, with `recordedAt` as an
 * ISO date and `cost` as a decimal string beside `costMicros`.
 *
 * @since 0.3.0
 * @category formatting
 */
export const formatLedgerJson = (rows: ReadonlyArray<SqlTokenStore.LedgerRow>): string =>
  JSON.stringify(
    rows.map((row) => ({
      ...row,
      teamId: row.teamId ?? null,
      orgId: row.orgId ?? null,
      provider: row.provider ?? null,
      model: row.model ?? null,
      recordedAt: new Date(row.recordedAt).toISOString(),
      cost: formatCost(row.costMicros)
    })),
    null,
    2
  )

// -----------------------------------------------------------------------------
// Errors
// -----------------------------------------------------------------------------

/**
 * A command that could not do its work (Redis unreachable, a bad setting, an
 * invalid input), with the message shown to the user.
 *
 * @since 0.1.0
 * @category errors
 */
export class CliError extends Data.TaggedError("CliError")<{
  /** `InvalidArguments`: the command line is wrong (the usage is shown); `Failed`: the work failed. */
  readonly reason: "InvalidArguments" | "Failed"
  readonly message: string
}> {}

const optionNames: Readonly<Record<string, string>> = {
  url: "--redis",
  nodes: "--redis-cluster",
  keyPrefix: "--key-prefix",
  filename: "--database"
}

const describeConfigError = (error: ConfigError.ConfigError): string =>
  ConfigError.reduceWithContext(error, undefined, {
    andCase: (_, left, right) => `${left}; ${right}`,
    orCase: (_, left, right) => `${left}; ${right}`,
    invalidDataCase: (_, path, message) => `Invalid ${describePath(path)}: ${message}`,
    missingDataCase: (_, path, message) => `Missing ${describePath(path)}: ${message}`,
    sourceUnavailableCase: (_, path, message) => `Unavailable ${describePath(path)}: ${message}`,
    unsupportedCase: (_, path, message) => `Unsupported ${describePath(path)}: ${message}`
  })

const describePath = (path: ReadonlyArray<string>): string => {
  const name = path.join(".")
  return optionNames[name] ?? name
}

/**
 * Host and port of a Redis URL, never its password: what error messages show.
 *
 * @since 0.1.0
 * @category formatting
 */
export const redisLocation = (url: string): string => {
  try {
    const parsed = new URL(url)
    return parsed.port === "" ? parsed.hostname : `${parsed.hostname}:${parsed.port}`
  } catch {
    return "the given URL"
  }
}

const toCliError = (where: string) => (error: ConfigError.ConfigError | TokenStore.TokenStoreError): CliError =>
  ConfigError.isConfigError(error)
    ? new CliError({ reason: "InvalidArguments", message: describeConfigError(error) })
    : error.reason === "Unavailable" || error.reason === "Timeout"
    ? new CliError({ reason: "Failed", message: `Cannot reach ${where}: ${error.message}` })
    : new CliError({ reason: error.reason === "InvalidInput" ? "InvalidArguments" : "Failed", message: error.message })

// -----------------------------------------------------------------------------
// Commands
// -----------------------------------------------------------------------------

/**
 * How long one command may wait for Redis: to connect, and for each reply.
 *
 * @since 0.1.0
 * @category constants
 */
export const redisTimeout: Duration.Duration = Duration.seconds(3)

const redis = Options.redacted("redis").pipe(
  Options.withPseudoName("URL"),
  Options.withDescription("Redis URL (redis:// or rediss://); default: the REDIS_URL environment variable"),
  Options.optional
)

const redisCluster = Options.redacted("redis-cluster").pipe(
  Options.withPseudoName("NODES"),
  Options.withDescription(
    "Redis Cluster: some of its nodes, comma-separated (host:port, redis:// or rediss:// URLs); default: the REDIS_CLUSTER_NODES environment variable"
  ),
  Options.optional
)

const database = Options.redacted("database").pipe(
  Options.withPseudoName("URL"),
  Options.withDescription(
    "SQL token store: postgres://... or sqlite:FILE; default: the DATABASE_URL environment variable (when REDIS_URL is unset)"
  ),
  Options.optional
)

const keyPrefix = Options.text("key-prefix").pipe(
  Options.withPseudoName("PREFIX"),
  Options.withDescription("Prefix of the token store's keys; default: REDIS_KEY_PREFIX, else token_usage"),
  Options.withFallbackConfig(Config.string("REDIS_KEY_PREFIX").pipe(Config.withDefault("token_usage")))
)

const cycle = Options.text("cycle").pipe(
  Options.withPseudoName("YYYY-MM-DD"),
  Options.withDescription("Billing cycle start date YYYY-MM-DD; default: the current monthly cycle (UTC)"),
  Options.withSchema(BillingCycle.CycleDate),
  Options.optional
)

const user = Options.text("user").pipe(Options.withPseudoName("ID"), Options.withDescription("User id"))

const limit = Options.integer("limit").pipe(
  Options.withPseudoName("N"),
  Options.withDescription("Token limit of the user in the cycle, a non-negative integer"),
  Options.withSchema(
    Schema.Number.pipe(
      Schema.filter((n) => Number.isSafeInteger(n) && n >= 0, {
        message: (issue) => `Expected a non-negative integer, got ${String(issue.actual)}`
      })
    )
  )
)

interface StoreOptions {
  readonly redis: Option.Option<Redacted.Redacted<string>>
  readonly redisCluster: Option.Option<Redacted.Redacted<string>>
  readonly database: Option.Option<Redacted.Redacted<string>>
  readonly keyPrefix: string
  readonly cycle: Option.Option<BillingCycle.CycleDate>
}

/** Where a SQL store is: a PostgreSQL URL, or a SQLite file. */
type Database =
  | { readonly _tag: "Postgres"; readonly url: Redacted.Redacted<string> }
  | { readonly _tag: "Sqlite"; readonly filename: string }

/**
 * The database of a `--database` value: `postgres://` or `postgresql://` URLs,
 * `sqlite:FILE` (a path, relative to the working directory, or absolute).
 *
 * @since 0.3.0
 * @category parsing
 */
export const parseDatabase = (value: Redacted.Redacted<string>): Either.Either<Database, CliError> => {
  const text = Redacted.value(value)
  if (/^postgres(ql)?:\/\//.test(text)) return Either.right({ _tag: "Postgres", url: value })
  if (text.startsWith("sqlite:") && text.length > "sqlite:".length) {
    return Either.right({ _tag: "Sqlite", filename: text.slice("sqlite:".length) })
  }
  return Either.left(
    new CliError({
      reason: "InvalidArguments",
      message: "Invalid --database: expected postgres://... or sqlite:FILE (the value is not shown: it may hold a password)"
    })
  )
}

const databaseLocation = (database: Database): string =>
  database._tag === "Sqlite" ? `the SQLite file ${database.filename}` : `PostgreSQL at ${redisLocation(Redacted.value(database.url))}`

/** The store the options name: an explicit flag, then REDIS_URL, then REDIS_CLUSTER_NODES, then DATABASE_URL. */
const chooseStore = (
  options: Pick<StoreOptions, "redis" | "redisCluster" | "database">
): Effect.Effect<
  | { readonly _tag: "Redis"; readonly url: Redacted.Redacted<string> }
  | { readonly _tag: "RedisCluster"; readonly nodes: ReadonlyArray<Redacted.Redacted<string>> }
  | { readonly _tag: "Sql"; readonly database: Database },
  CliError
> =>
  Effect.gen(function*() {
    const named = [options.redis, options.redisCluster, options.database].filter(Option.isSome).length
    if (named > 1) {
      return yield* new CliError({
        reason: "InvalidArguments",
        message: "Pass one of --redis, --redis-cluster or --database, not several"
      })
    }
    if (Option.isSome(options.database)) {
      return { _tag: "Sql" as const, database: yield* parseDatabase(options.database.value) }
    }
    if (Option.isSome(options.redis)) return { _tag: "Redis" as const, url: options.redis.value }
    if (Option.isSome(options.redisCluster)) return { _tag: "RedisCluster" as const, nodes: clusterNodes(options.redisCluster.value) }
    const fromEnv = (name: string) =>
      Config.option(Config.redacted(name)).pipe(
        Effect.map(Option.filter((url) => Redacted.value(url) !== "")),
        Effect.orElseSucceed(() => Option.none())
      )
    const redisUrl = yield* fromEnv("REDIS_URL")
    if (Option.isSome(redisUrl)) return { _tag: "Redis" as const, url: redisUrl.value }
    const clusterNodesEnv = yield* fromEnv("REDIS_CLUSTER_NODES")
    if (Option.isSome(clusterNodesEnv)) return { _tag: "RedisCluster" as const, nodes: clusterNodes(clusterNodesEnv.value) }
    const databaseUrl = yield* fromEnv("DATABASE_URL")
    if (Option.isSome(databaseUrl)) return { _tag: "Sql" as const, database: yield* parseDatabase(databaseUrl.value) }
    return yield* new CliError({
      reason: "InvalidArguments",
      message: "No Redis URL: pass --redis URL or set REDIS_URL (--redis-cluster NODES / REDIS_CLUSTER_NODES for a " +
        "Redis Cluster, --database URL / DATABASE_URL for a SQL store)"
    })
  })

/** The nodes of a `--redis-cluster` value (comma-separated), each kept redacted (a URL may hold a password). */
const clusterNodes = (value: Redacted.Redacted<string>): ReadonlyArray<Redacted.Redacted<string>> =>
  Redacted.value(value).split(",").map((node) => node.trim()).filter((node) => node !== "").map((node) => Redacted.make(node))

/** Where a cluster is, for messages: its nodes' hosts and ports, never a password. */
const clusterLocation = (nodes: ReadonlyArray<Redacted.Redacted<string>>): string =>
  `the Redis Cluster at ${
    nodes.map((node) => {
      const text = Redacted.value(node)
      return redisLocation(/^rediss?:\/\//.test(text) ? text : `redis://${text}`)
    }).join(",")
  }`

/**
 * The SQL store of a database and a reader of its ledger; closed with the
 * scope. The SQL modules (optional peers) are loaded only here.
 */
const sqlStore = (database: Database) =>
  Effect.gen(function*() {
    const [Sql, SqlClient] = yield* Effect.promise(() =>
      Promise.all([import("../layers/SqlTokenStore.js"), import("@effect/sql/SqlClient")])
    )
    const layer = database._tag === "Postgres"
      ? Sql.layerPg({ url: database.url, timeout: redisTimeout })
      : Sql.layerSqlite({ filename: database.filename, timeout: redisTimeout })
    const context = yield* Layer.build(layer).pipe(
      Effect.mapError(toCliError(databaseLocation(database))),
      Effect.timeoutFail({
        duration: redisTimeout,
        onTimeout: () =>
          new CliError({
            reason: "Failed",
            message: `Cannot reach ${databaseLocation(database)}: no answer within ${Duration.format(redisTimeout)}`
          })
      })
    )
    return {
      store: Context.get(context, TokenStore.TokenStore),
      ledger: (query: SqlTokenStore.LedgerQuery) =>
        Effect.provideService(Sql.ledger(query), SqlClient.SqlClient, Context.get(context, SqlClient.SqlClient))
    }
  })

/**
 * Runs `f` with the Redis token store and the resolved cycle; the connection
 * is closed when it is done. Connecting, and each command, are bounded by
 * `redisTimeout`.
 */
const withStore = <A>(
  options: StoreOptions,
  f: (store: TokenStore.Service, cycle: string) => Effect.Effect<A, TokenStore.TokenStoreError>
): Effect.Effect<A, CliError> =>
  Effect.gen(function*() {
    const resolved = yield* Option.match(options.cycle, {
      onNone: () => BillingCycle.current(),
      onSome: Effect.succeed
    })
    const chosen = yield* chooseStore(options)
    if (chosen._tag === "Sql") {
      const toError = toCliError(databaseLocation(chosen.database))
      const { store } = yield* sqlStore(chosen.database)
      return yield* Effect.mapError(f(store, resolved), toError)
    }
    const where = chosen._tag === "Redis" ? `Redis at ${redisLocation(Redacted.value(chosen.url))}` : clusterLocation(chosen.nodes)
    const toError = toCliError(where)
    // TLS files from the environment (REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE).
    const tls = yield* Effect.mapError(RedisTokenStore.tlsConfig, toError)
    const bounds = {
      keyPrefix: options.keyPrefix,
      connectTimeout: redisTimeout,
      commandTimeout: redisTimeout,
      shutdownTimeout: Duration.seconds(1),
      ...(tls === undefined ? {} : { tls })
    }
    // ioredis bounds the TCP connect, not the handshake after it (a server
    // that accepts and never answers): the whole connect is bounded here.
    const store = yield* (chosen._tag === "Redis"
      ? RedisTokenStore.make({ url: chosen.url, ...bounds })
      : RedisTokenStore.makeCluster({ nodes: chosen.nodes, ...bounds })).pipe(
        Effect.mapError(toError),
        Effect.timeoutFail({
          duration: redisTimeout,
          onTimeout: () =>
            new CliError({
              reason: "Failed",
              message: `Cannot reach ${where}: no answer within ${Duration.format(redisTimeout)}`
            })
        })
      )
    return yield* Effect.mapError(f(store, resolved), toError)
  }).pipe(Effect.scoped)

const usage = Command.make(
  "usage",
  { redis, redisCluster, database, keyPrefix, cycle, user: Options.optional(user), json: Options.boolean("json") },
  (options) =>
    withStore(options, (store, cycle) =>
      Effect.gen(function*() {
        const users = yield* Option.match(options.user, {
          onNone: () => store.users(cycle),
          onSome: (user) => Effect.succeed([user])
        })
        const rows = yield* Effect.forEach(users, (user) =>
          Effect.map(store.stats(user, cycle), (stats) => makeRow(user, cycle, stats)))
        return { cycle, rows }
      })).pipe(
        Effect.flatMap(({ cycle, rows }) =>
          Console.log(
            options.json
              ? formatJson(rows)
              : rows.length === 0
              ? `No usage or limits in cycle ${cycle}.`
              : `Cycle ${cycle}\n${formatTable(rows)}`
          )
        )
      )
).pipe(Command.withDescription("Print per-user token usage and limits of a billing cycle"))

const setLimit = Command.make(
  "set-limit",
  { redis, redisCluster, database, keyPrefix, cycle, user, limit },
  (options) =>
    withStore(options, (store, cycle) => Effect.as(store.setLimit(options.user, cycle, options.limit), cycle)).pipe(
      Effect.flatMap((cycle) =>
        Console.log(`Limit of ${JSON.stringify(options.user)} in cycle ${cycle} set to ${options.limit} tokens.`)
      )
    )
).pipe(Command.withDescription("Set a user's token limit for a billing cycle"))

const reset = Command.make(
  "reset",
  { redis, redisCluster, database, keyPrefix, cycle, user },
  (options) =>
    withStore(options, (store, cycle) => Effect.as(store.reset(options.user, cycle), cycle)).pipe(
      Effect.flatMap((cycle) =>
        Console.log(`Usage of ${JSON.stringify(options.user)} in cycle ${cycle} reset (the limit is kept).`)
      )
    )
).pipe(Command.withDescription("Clear a user's usage counters for a billing cycle (the limit is kept)"))

const maxRows = Options.integer("max-rows").pipe(
  Options.withPseudoName("N"),
  Options.withDescription("Print at most N calls (the oldest first); default 10000"),
  Options.withSchema(
    Schema.Number.pipe(
      Schema.filter((n) => Number.isSafeInteger(n) && n > 0, {
        message: (issue) => `Expected a positive integer, got ${String(issue.actual)}`
      })
    )
  ),
  Options.withDefault(10_000)
)

const ledgerCommand = Command.make(
  "ledger",
  { database, cycle, user: Options.optional(user), json: Options.boolean("json"), maxRows },
  (options) =>
    Effect.gen(function*() {
      const resolved = yield* Option.match(options.cycle, { onNone: () => BillingCycle.current(), onSome: Effect.succeed })
      const chosen = yield* chooseStore({ database: options.database, redis: Option.none(), redisCluster: Option.none() })
      if (chosen._tag !== "Sql") {
        return yield* new CliError({
          reason: "InvalidArguments",
          message: "The ledger is kept by the SQL store: pass --database URL or set DATABASE_URL"
        })
      }
      const toError = toCliError(databaseLocation(chosen.database))
      const { ledger } = yield* sqlStore(chosen.database)
      const rows = yield* ledger({ cycle: resolved, userId: Option.getOrUndefined(options.user), limit: options.maxRows })
        .pipe(Effect.mapError(toError))
      yield* Console.log(
        options.json
          ? formatLedgerJson(rows)
          : rows.length === 0
          ? `No recorded calls in cycle ${resolved}.`
          : `Cycle ${resolved}\n${formatLedgerTable(rows)}`
      )
    }).pipe(Effect.scoped)
).pipe(Command.withDescription("Print the recorded calls of a billing cycle from the SQL store's ledger, and their sums"))

/**
 * The root command, `effect-llm-callbacks`, with the subcommands `usage`,
 * `set-limit`, `reset` and `ledger`.
 *
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("effect-llm-callbacks").pipe(
  Command.withDescription("Token usage administration for effect-llm-callbacks"),
  Command.withSubcommands([usage, setLimit, reset, ledgerCommand])
)

/**
 * The usage text of the subcommand named in the arguments, or of the root
 * command when none is.
 */
const usageText = (args: ReadonlyArray<string>): string => {
  const target = args.find((arg) => arg === "usage" || arg === "set-limit" || arg === "reset" || arg === "ledger")
  const usageOf = target === "ledger"
    ? Command.getUsage(ledgerCommand)
    : target === "usage"
    ? Command.getUsage(usage)
    : target === "set-limit"
    ? Command.getUsage(setLimit)
    : target === "reset"
    ? Command.getUsage(reset)
    : Command.getUsage(command)
  return HelpDoc.toAnsiText(HelpDoc.sequence(HelpDoc.h1("USAGE"), Usage.getHelp(usageOf)))
}

/**
 * Runs the command line on `process.argv`-style arguments. Invalid arguments
 * print the problem (done by `@effect/cli`) and the usage on stderr, then fail
 * with exit code 2; a command that fails prints its error on stderr and fails
 * with exit code 1.
 *
 * @since 0.1.0
 * @category running
 */
export const run = (
  argv: ReadonlyArray<string>
): Effect.Effect<void, ExitCode, CliApp.CliApp.Environment> =>
  Command.run(command, { name: "effect-llm-callbacks", version })(argv).pipe(
    Effect.catchAll((error) =>
      ValidationError.isValidationError(error)
        // @effect/cli has printed the problem already.
        ? Effect.zipRight(Console.error(usageText(argv.slice(2))), Effect.fail(new ExitCode({ code: 2 })))
        : error.reason === "InvalidArguments"
        ? Effect.zipRight(
          Console.error(`Error: ${error.message}\n\n${usageText(argv.slice(2))}`),
          Effect.fail(new ExitCode({ code: 2 }))
        )
        : Effect.zipRight(Console.error(`Error: ${error.message}`), Effect.fail(new ExitCode({ code: 1 })))
    )
  )

/**
 * The exit code of a failed run.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

/**
 * The version shown by `--version`.
 *
 * @since 0.1.0
 * @category constants
 */
export const version = "0.1.0"
