// The built command line (`node <outDir>/bin/cli.js`), run as a child process
// against the shared test Redis, each test under its own key prefix.
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as net from "node:net"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { beforeAll } from "vitest"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as SqlTokenStore from "../layers/SqlTokenStore.js"
import * as BillingCycle from "../src/BillingCycle.js"
import * as TokenStore from "../src/TokenStore.js"
import { postgresUrl, skipWithoutPostgres } from "./support/postgres.js"
import { bannerWithoutRedis, freePort, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "./support/redis.js"
import { makeRedisCluster } from "./support/redisCluster.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
// Built apart from `dist/` so that the package test, which rebuilds `dist/`,
// may run at the same time.
const outDir = path.join(root, ".tmp", "cli-test-dist")
const cliPath = path.join(outDir, "bin", "cli.js")

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

// eslint-disable-next-line no-control-regex
const ansi = /\u001b\[[0-9;]*m/g

/** The environment of the tests without the variables the command line reads. */
const baseEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  delete env["REDIS_URL"]
  delete env["REDIS_KEY_PREFIX"]
  delete env["REDIS_CLUSTER_NODES"]
  delete env["DATABASE_URL"]
  return env
}

const runProcess = (file: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = baseEnv()) =>
  new Promise<Result>((resolve) => {
    execFile(file, args, { cwd: root, env, timeout: 60_000, encoding: "utf8" }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
      resolve({ code, stdout: stdout.replace(ansi, ""), stderr: stderr.replace(ansi, "") })
    })
  })

const cli = (args: ReadonlyArray<string>, env?: NodeJS.ProcessEnv) =>
  runProcess(process.execPath, [cliPath, ...args], env)

beforeAll(async () => {
  fs.rmSync(outDir, { recursive: true, force: true })
  const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
  const build = await runProcess(process.execPath, [tsc, "-p", "tsconfig.build.json", "--outDir", outDir])
  if (build.code !== 0) {
    throw new Error(`The build failed (${build.code}):\n${build.stdout}\n${build.stderr}`)
  }
}, 180_000)

const cycle = "2026-01-01"

const counts = (promptTokens: number, completionTokens: number): TokenStore.TokenCounts => ({
  promptTokens,
  completionTokens,
  totalTokens: promptTokens + completionTokens
})

/** Records usage straight through the Redis token store, as an application would. */
const seed = (
  keyPrefix: string,
  records: ReadonlyArray<{
    readonly userId: string
    readonly usage: TokenStore.TokenCounts
    readonly costMicros?: number
    readonly estimated?: boolean
    readonly cycle?: string
  }>
) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
        let n = 0
        for (const record of records) {
          yield* store.record({
            callId: `seed-${n++}`,
            userId: record.userId,
            cycle: record.cycle ?? cycle,
            usage: record.usage,
            costMicros: record.costMicros,
            estimated: record.estimated
          })
        }
      })
    )
  )

/** Tests that need the shared Redis; skipped without it outside CI (see `bannerWithoutRedis`). */
const itRedis = it.skipIf(skipWithoutRedis)

bannerWithoutRedis("test/cli.test.ts (the commands on Redis)")

/** A Redis URL for arguments refused before any connection is made. */
const unusedRedis = "redis://127.0.0.1:1"

const lines = (text: string): ReadonlyArray<ReadonlyArray<string>> =>
  text.trim().split("\n").map((line) => line.trim().split(/\s+/))

describe("effect-llm-callbacks CLI", () => {
  itRedis("usage prints every user of the cycle as a table", async () => {
    const keyPrefix = uniqueKeyPrefix("cli_table")
    await seed(keyPrefix, [
      { userId: "alice", usage: { ...counts(100, 50), cachedTokens: 60, reasoningTokens: 20 }, costMicros: 1_234_567 },
      { userId: "alice", usage: { ...counts(1, 2), cacheWriteTokens: 1 }, costMicros: 3, estimated: true },
      { userId: "bob", usage: counts(10, 5) },
      { userId: "carol", usage: counts(7, 7), cycle: "2025-12-01" }
    ])
    const result = await cli(["usage", "--redis", redisUrl(), "--key-prefix", keyPrefix, "--cycle", cycle])
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(lines(result.stdout), [
      ["Cycle", cycle],
      [
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
      ],
      ["alice", "101", "60", "1", "52", "20", "153", "3", "1.234570", "-", "-", "no"],
      ["bob", "10", "0", "0", "5", "0", "15", "0", "0.000000", "-", "-", "no"]
    ])
  })

  itRedis("usage --json prints a JSON array, --user restricts it to one user", async () => {
    const keyPrefix = uniqueKeyPrefix("cli_json")
    await seed(keyPrefix, [
      { userId: "alice", usage: counts(100, 50), costMicros: 2_500_000 },
      { userId: "bob", usage: counts(10, 5) }
    ])
    const all = await cli(["usage", "--redis", redisUrl(), "--key-prefix", keyPrefix, "--cycle", cycle, "--json"])
    assert.strictEqual(all.code, 0, all.stderr)
    const alice = {
      user: "alice",
      cycle,
      promptTokens: 100,
      completionTokens: 50,
      totalTokens: 150,
      cachedTokens: 0,
      cacheWriteTokens: 0,
      reasoningTokens: 0,
      estimatedTokens: 0,
      costMicros: 2_500_000,
      cost: "2.500000",
      limit: null,
      remaining: null,
      exceeded: false
    }
    assert.deepStrictEqual(JSON.parse(all.stdout), [alice, {
      user: "bob",
      cycle,
      promptTokens: 10,
      completionTokens: 5,
      totalTokens: 15,
      cachedTokens: 0,
      cacheWriteTokens: 0,
      reasoningTokens: 0,
      estimatedTokens: 0,
      costMicros: 0,
      cost: "0.000000",
      limit: null,
      remaining: null,
      exceeded: false
    }])

    const one = await cli([
      "usage",
      "--redis",
      redisUrl(),
      "--key-prefix",
      keyPrefix,
      "--cycle",
      cycle,
      "--user",
      "alice",
      "--json"
    ])
    assert.strictEqual(one.code, 0, one.stderr)
    assert.deepStrictEqual(JSON.parse(one.stdout), [alice])
  })

  itRedis("set-limit then usage shows the limit, the remaining tokens and whether it is exceeded", async () => {
    const keyPrefix = uniqueKeyPrefix("cli_limit")
    await seed(keyPrefix, [{ userId: "alice", usage: counts(100, 50) }])
    const common = ["--redis", redisUrl(), "--key-prefix", keyPrefix, "--cycle", cycle]

    const set = await cli(["set-limit", ...common, "--user", "alice", "--limit", "1000"])
    assert.strictEqual(set.code, 0, set.stderr)
    assert.include(set.stdout, "1000")
    const under = await cli(["usage", ...common, "--json"])
    assert.strictEqual(under.code, 0, under.stderr)
    assert.deepInclude(JSON.parse(under.stdout)[0], { totalTokens: 150, limit: 1000, remaining: 850, exceeded: false })

    // A limit on a user without usage lists the user too.
    const other = await cli(["set-limit", ...common, "--user", "dave", "--limit", "0"])
    assert.strictEqual(other.code, 0, other.stderr)
    const lowered = await cli(["set-limit", ...common, "--user", "alice", "--limit", "150"])
    assert.strictEqual(lowered.code, 0, lowered.stderr)
    const table = await cli(["usage", ...common])
    assert.strictEqual(table.code, 0, table.stderr)
    assert.deepStrictEqual(lines(table.stdout).slice(2), [
      ["alice", "100", "0", "0", "50", "0", "150", "0", "0.000000", "150", "0", "yes"],
      ["dave", "0", "0", "0", "0", "0", "0", "0", "0.000000", "0", "0", "yes"]
    ])
  })

  itRedis("reset clears the usage of one user and keeps the limit", async () => {
    const keyPrefix = uniqueKeyPrefix("cli_reset")
    await seed(keyPrefix, [
      { userId: "alice", usage: counts(100, 50), costMicros: 10 },
      { userId: "bob", usage: counts(10, 5) }
    ])
    const common = ["--redis", redisUrl(), "--key-prefix", keyPrefix, "--cycle", cycle]
    assert.strictEqual((await cli(["set-limit", ...common, "--user", "alice", "--limit", "120"])).code, 0)

    const reset = await cli(["reset", ...common, "--user", "alice"])
    assert.strictEqual(reset.code, 0, reset.stderr)
    const after = await cli(["usage", ...common, "--json"])
    assert.strictEqual(after.code, 0, after.stderr)
    const rows = JSON.parse(after.stdout) as ReadonlyArray<Record<string, unknown>>
    assert.deepStrictEqual(
      rows.map((row) => [row["user"], row["totalTokens"], row["costMicros"], row["limit"], row["remaining"]]),
      [["alice", 0, 0, 120, 120], ["bob", 15, 0, null, null]]
    )
  })

  itRedis("takes the URL from REDIS_URL, the prefix from REDIS_KEY_PREFIX and the current cycle by default", async () => {
    const keyPrefix = uniqueKeyPrefix("cli_env")
    const current = Effect.runSync(BillingCycle.current())
    await seed(keyPrefix, [{ userId: "erin", usage: counts(3, 4), cycle: current }])
    const env = { ...baseEnv(), REDIS_URL: redisUrl(), REDIS_KEY_PREFIX: keyPrefix }

    const result = await cli(["usage", "--json"], env)
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(
      (JSON.parse(result.stdout) as ReadonlyArray<Record<string, unknown>>).map((row) => [row["user"], row["cycle"]]),
      [["erin", current]]
    )
    // --key-prefix wins over REDIS_KEY_PREFIX: another prefix holds nothing.
    const empty = await cli(["usage", "--key-prefix", uniqueKeyPrefix("cli_empty")], env)
    assert.strictEqual(empty.code, 0, empty.stderr)
    assert.strictEqual(empty.stdout.trim(), `No usage or limits in cycle ${current}.`)
  })

  it.scoped.skipIf(skipWithoutRedis)(
    "on a Redis Cluster with a password: --redis-cluster NODES or REDIS_CLUSTER_NODES; a wrong password is named, not shown",
    () =>
      Effect.gen(function*() {
        const cluster = yield* makeRedisCluster({ password: "pw-7f3a" })
        const keyPrefix = uniqueKeyPrefix("cli_cluster")
        const nodes = cluster.nodes.map((node) => `redis://:pw-7f3a@${node}`).join(",")
        const store = yield* RedisTokenStore.makeCluster({ nodes: nodes.split(","), keyPrefix })
        // Users in different slots, on different masters.
        for (const [i, userId] of ["alice", "bob", "carol", "dave"].entries()) {
          yield* store.record({ callId: `c${i}`, userId, cycle, usage: counts(10 * (i + 1), 1) })
        }
        const run = (args: ReadonlyArray<string>, env?: NodeJS.ProcessEnv) => Effect.promise(() => cli(args, env))

        const listed = yield* run(["usage", "--redis-cluster", nodes, "--key-prefix", keyPrefix, "--cycle", cycle, "--json"])
        assert.strictEqual(listed.code, 0, listed.stderr)
        assert.deepStrictEqual(
          (JSON.parse(listed.stdout) as ReadonlyArray<Record<string, unknown>>).map((row) => [row["user"], row["totalTokens"]]),
          [["alice", 11], ["bob", 21], ["carol", 31], ["dave", 41]]
        )
        const env = { ...baseEnv(), REDIS_CLUSTER_NODES: nodes, REDIS_KEY_PREFIX: keyPrefix }
        const limited = yield* run(["set-limit", "--user", "bob", "--limit", "100", "--cycle", cycle], env)
        assert.strictEqual(limited.code, 0, limited.stderr)
        assert.strictEqual((yield* store.stats("bob", cycle)).limit._tag, "Some")
        const reset = yield* run(["reset", "--user", "carol", "--cycle", cycle], env)
        assert.strictEqual(reset.code, 0, reset.stderr)
        assert.strictEqual((yield* store.stats("carol", cycle)).totalTokens, 0)

        const wrong = yield* run([
          "usage",
          "--redis-cluster",
          cluster.nodes.map((node) => `redis://:hunter2@${node}`).join(","),
          "--cycle",
          cycle
        ])
        assert.strictEqual(wrong.code, 1, wrong.stderr)
        assert.include(wrong.stderr, "Cannot reach the Redis Cluster at 127.0.0.1:")
        assert.include(wrong.stderr, "WRONGPASS")
        assert.notInclude(wrong.stderr, "hunter2")
      }),
    120_000
  )

  it.scoped.skipIf(skipWithoutRedis)(
    "on a Redis Cluster that asks for a client certificate: the PEM files from REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE; one that cannot be read is named",
    () =>
      Effect.gen(function*() {
        const cluster = yield* makeRedisCluster({ tls: "mutual" })
        const keyPrefix = uniqueKeyPrefix("cli_mtls")
        const nodes = cluster.nodes.map((node) => `rediss://${node}`)
        const tls = { ca: cluster.ca!, cert: cluster.client!.cert, key: cluster.client!.key }
        const store = yield* RedisTokenStore.makeCluster({ nodes, keyPrefix, tls })
        yield* store.record({ callId: "c1", userId: "erin", cycle, usage: counts(5, 2) })
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "cli-mtls-"))),
          (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
        )
        for (const [name, pem] of Object.entries(tls)) fs.writeFileSync(path.join(dir, `${name}.pem`), pem)
        const env = {
          ...baseEnv(),
          REDIS_CLUSTER_NODES: nodes.join(","),
          REDIS_KEY_PREFIX: keyPrefix,
          REDIS_TLS_CA_FILE: path.join(dir, "ca.pem"),
          REDIS_TLS_CERT_FILE: path.join(dir, "cert.pem"),
          REDIS_TLS_KEY_FILE: path.join(dir, "key.pem")
        }
        const listed = yield* Effect.promise(() => cli(["usage", "--cycle", cycle, "--json"], env))
        assert.strictEqual(listed.code, 0, listed.stderr)
        assert.deepStrictEqual(
          (JSON.parse(listed.stdout) as ReadonlyArray<Record<string, unknown>>).map((row) => [row["user"], row["totalTokens"]]),
          [["erin", 7]]
        )
        const missing = path.join(dir, "nope.pem")
        const unreadable = yield* Effect.promise(() => cli(["usage", "--cycle", cycle], { ...env, REDIS_TLS_KEY_FILE: missing }))
        assert.strictEqual(unreadable.code, 2, unreadable.stderr)
        assert.include(unreadable.stderr, "REDIS_TLS_KEY_FILE")
        assert.include(unreadable.stderr, missing)
      }),
    120_000
  )

  describe("invalid arguments: a message and the usage on stderr, exit code 2", () => {
    const expectUsageError = async (args: ReadonlyArray<string>, message: string, env?: NodeJS.ProcessEnv) => {
      const result = await cli(args, env)
      assert.strictEqual(result.code, 2, `${result.stdout}\n${result.stderr}`)
      assert.include(result.stderr, message)
      assert.include(result.stderr, "USAGE")
      assert.strictEqual(result.stdout, "")
    }

    it("an unknown flag", () => expectUsageError(["usage", "--redis", unusedRedis, "--bogus"], "'--bogus'"))

    it("an unknown subcommand", () => expectUsageError(["frobnicate"], "Invalid subcommand"))

    it("a cycle that is not a calendar date", () =>
      expectUsageError(
        ["usage", "--redis", unusedRedis, "--cycle", "2025-02-30"],
        "Expected a real calendar date YYYY-MM-DD, got \"2025-02-30\""
      ))

    it("a negative limit", () =>
      expectUsageError(
        ["set-limit", "--redis", unusedRedis, "--user", "alice", "--limit=-5"],
        "Expected a non-negative integer, got -5"
      ))

    it("a missing --limit", () =>
      expectUsageError(["set-limit", "--redis", unusedRedis, "--user", "alice"], "--limit"))

    itRedis("an empty user id", () =>
      expectUsageError(
        ["reset", "--redis", redisUrl(), "--key-prefix", uniqueKeyPrefix("cli_empty_user"), "--user", ""],
        "Invalid userId"
      ))

    it("no Redis URL", () => expectUsageError(["usage"], "No Redis URL: pass --redis URL or set REDIS_URL"))

    it("a URL that is not a Redis URL", () =>
      expectUsageError(["usage", "--redis", "http://127.0.0.1:1"], "Invalid --redis"))
  })

  describe("Redis unreachable: an error on stderr, exit code 1, in bounded time", () => {
    it("nothing listens on the port", async () => {
      const port = await freePort()
      const result = await cli(["usage", "--redis", `redis://:hunter2@127.0.0.1:${port}`])
      assert.strictEqual(result.code, 1, result.stderr)
      assert.include(result.stderr, `Cannot reach Redis at 127.0.0.1:${port}`)
      assert.notInclude(result.stderr, "hunter2")
      assert.strictEqual(result.stdout, "")
    })

    it("a server that accepts connections and never answers", async () => {
      const sockets = new Set<net.Socket>()
      const server = net.createServer((socket) => {
        sockets.add(socket)
        socket.on("close", () => sockets.delete(socket))
      })
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      const address = server.address() as net.AddressInfo
      try {
        // Bounded by the exec timeout too: a hang fails the test instead of stalling the suite.
        const result = await cli(["set-limit", "--redis", `redis://127.0.0.1:${address.port}`, "--user", "a", "--limit", "1"])
        assert.strictEqual(result.code, 1, result.stderr)
        assert.include(result.stderr, `Cannot reach Redis at 127.0.0.1:${address.port}: no answer within 3s`)
      } finally {
        for (const socket of sockets) socket.destroy()
        await new Promise((resolve) => server.close(resolve))
      }
    })
  })

  describe("the SQL store and its ledger", () => {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), "effect-llm-callbacks-cli-"))

    /** Records calls through the SQL store of a database, as an application would. */
    const seedSql = (
      store: Layer.Layer<TokenStore.TokenStore, unknown>,
      records: ReadonlyArray<TokenStore.RecordInput>
    ) =>
      Effect.runPromise(
        Effect.flatMap(TokenStore.TokenStore, (tokens) => Effect.forEach(records, tokens.record)).pipe(
          Effect.provide(store),
          Effect.orDie
        )
      )

    const calls = (userPrefix: string): ReadonlyArray<TokenStore.RecordInput> => [
      {
        callId: "c1",
        userId: `${userPrefix}alice`,
        cycle,
        usage: { ...counts(100, 50), cachedTokens: 60, reasoningTokens: 20 },
        costMicros: 1_234_567,
        provider: "openai",
        model: "gpt-4o-mini"
      },
      { callId: "c2", userId: `${userPrefix}alice`, cycle, usage: counts(1, 2), estimated: true },
      { callId: "c3", userId: `${userPrefix}bob`, cycle, usage: counts(10, 5), provider: "anthropic", model: "claude" }
    ]

    it("usage, set-limit and ledger on a SQLite file", async () => {
      const file = path.join(directory, "store.sqlite")
      await seedSql(SqlTokenStore.layerSqlite({ filename: file }), calls(""))
      const database = `sqlite:${file}`
      const usage = await cli(["usage", "--database", database, "--cycle", cycle])
      assert.strictEqual(usage.code, 0, usage.stderr)
      assert.deepStrictEqual(lines(usage.stdout).slice(2), [
        ["alice", "101", "60", "0", "52", "20", "153", "3", "1.234567", "-", "-", "no"],
        ["bob", "10", "0", "0", "5", "0", "15", "0", "0.000000", "-", "-", "no"]
      ])
      const limit = await cli(["set-limit", "--database", database, "--cycle", cycle, "--user", "bob", "--limit", "15"])
      assert.strictEqual(limit.code, 0, limit.stderr)
      const bob = await cli(["usage", "--database", database, "--cycle", cycle, "--user", "bob", "--json"])
      assert.deepInclude((JSON.parse(bob.stdout) as ReadonlyArray<object>)[0], { limit: 15, exceeded: true })

      const table = await cli(["ledger", "--database", database, "--cycle", cycle])
      assert.strictEqual(table.code, 0, table.stderr)
      const rows = lines(table.stdout)
      assert.deepStrictEqual(rows[1], [
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
      ])
      assert.deepStrictEqual(rows.slice(2, 5).map((row) => row.slice(1)).sort(), [
        ["alice", "c1", "openai", "gpt-4o-mini", "100", "60", "0", "50", "20", "150", "no", "1.234567"],
        ["alice", "c2", "-", "-", "1", "0", "0", "2", "0", "3", "yes", "0.000000"],
        ["bob", "c3", "anthropic", "claude", "10", "0", "0", "5", "0", "15", "no", "0.000000"]
      ])
      assert.strictEqual(table.stdout.trim().split("\n").at(-1), "3 calls, 168 tokens (111 prompt, 57 completion), cost 1.234567")

      // DATABASE_URL names the store when no flag does; --user restricts the ledger to one user.
      const json = await cli(["ledger", "--cycle", cycle, "--user", "bob", "--json"], { ...baseEnv(), DATABASE_URL: database })
      assert.strictEqual(json.code, 0, json.stderr)
      assert.deepStrictEqual(
        (JSON.parse(json.stdout) as ReadonlyArray<Record<string, unknown>>).map((row) => [row["callId"], row["totalTokens"], row["model"]]),
        [["c3", 15, "claude"]]
      )
    })

    it.skipIf(skipWithoutPostgres)("ledger on PostgreSQL, the password never shown", async () => {
      const prefix = `cli-${Date.now().toString(36)}-`
      const url = postgresUrl()
      await seedSql(SqlTokenStore.layerPg({ url: Redacted.make(url) }), calls(prefix))
      const result = await cli(["ledger", "--database", url, "--cycle", cycle, "--user", `${prefix}alice`, "--json"])
      assert.strictEqual(result.code, 0, result.stderr)
      assert.deepStrictEqual(
        (JSON.parse(result.stdout) as ReadonlyArray<Record<string, unknown>>).map((row) => [row["callId"], row["cost"]]),
        [["c1", "1.234567"], ["c2", "0.000000"]]
      )
      const port = await freePort()
      const down = await cli(["ledger", "--database", `postgres://app:hunter2@127.0.0.1:${port}/db`, "--cycle", cycle])
      assert.strictEqual(down.code, 1, down.stderr)
      assert.include(down.stderr, `Cannot reach PostgreSQL at 127.0.0.1:${port}`)
      assert.notInclude(down.stderr, "hunter2")
    })

    it("a --database that is neither postgres:// nor sqlite:, or both stores named: exit code 2", async () => {
      const wrong = await cli(["usage", "--database", "mysql://root:hunter2@127.0.0.1/x"])
      assert.strictEqual(wrong.code, 2, wrong.stderr)
      assert.include(wrong.stderr, "Invalid --database: expected postgres://... or sqlite:FILE")
      assert.notInclude(wrong.stderr, "hunter2")
      const both = await cli(["usage", "--database", "sqlite:x", "--redis", unusedRedis])
      assert.strictEqual(both.code, 2, both.stderr)
      assert.include(both.stderr, "Pass one of --redis, --redis-cluster or --database, not several")
      const redisLedger = await cli(["ledger"], { ...baseEnv(), REDIS_URL: unusedRedis })
      assert.strictEqual(redisLedger.code, 2, redisLedger.stderr)
      assert.include(redisLedger.stderr, "The ledger is kept by the SQL store")
    })
  })

  it("--version prints the package version", async () => {
    const result = await cli(["--version"])
    const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { version: string }
    assert.strictEqual(result.code, 0, result.stderr)
    assert.strictEqual(result.stdout.trim(), pkg.version)
  })
})
