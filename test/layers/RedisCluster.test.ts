import { assert, describe, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Layer from "effect/Layer"
import { Cluster } from "ioredis"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as TokenStore from "../../src/TokenStore.js"
import { budgetConformance } from "../support/budgetConformance.js"
import { bannerWithoutRedis, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { makeRedisCluster, redisCluster } from "../support/redisCluster.js"
import { tokenStoreConformance } from "../support/tokenStoreConformance.js"

const clusterStore = (name: string) =>
  Layer.unwrapScoped(
    Effect.map(redisCluster, (cluster) =>
      RedisTokenStore.layerCluster({ nodes: cluster.nodes, keyPrefix: uniqueKeyPrefix(name) }))
  )

const usage = { promptTokens: 3, completionTokens: 4, totalTokens: 7 }

bannerWithoutRedis("test/layers/RedisCluster.test.ts")

describe.skipIf(skipWithoutRedis)("Redis", () => {
describe("RedisTokenStore on a Redis Cluster", () => {
  it.scoped("2,000 concurrent records of 50 users and 7 teams, with the default batching and auto-pipelining: exact", () =>
    Effect.gen(function*() {
      const cluster = yield* redisCluster
      const store = yield* RedisTokenStore.makeCluster({ nodes: cluster.nodes, keyPrefix: uniqueKeyPrefix("exact") })
      const cycle = "2025-01-01"
      const results = yield* Effect.forEach(
        Array.from({ length: 2_000 }, (_, i) => i),
        (i) =>
          Effect.either(store.record({ callId: `c${i}`, userId: `u${i % 50}`, teamId: `t${i % 7}`, cycle, usage })),
        { concurrency: 200 }
      )
      assert.strictEqual(results.filter((r) => r._tag === "Left").length, 0)
      // users() asks every master: all 50, though they live in different slots.
      const users = yield* store.users(cycle)
      assert.strictEqual(users.length, 50)
      let total = 0
      for (const user of users) total += (yield* store.stats(user, cycle)).totalTokens
      assert.strictEqual(total, 2_000 * 7)
      let teams = 0
      for (let t = 0; t < 7; t++) teams += (yield* store.stats({ level: "team", id: `t${t}` }, cycle)).totalTokens
      assert.strictEqual(teams, 2_000 * 7)
      // recordMany across slots, retried whole: each record counts once.
      const many = Array.from({ length: 100 }, (_, i): TokenStore.RecordInput => ({
        callId: `m${i}`,
        userId: `u${i % 50}`,
        orgId: "org",
        cycle,
        usage
      }))
      assert.isTrue((yield* store.recordMany(many)).every((o) => o === "recorded"))
      assert.isTrue((yield* store.recordMany(many)).every((o) => o === "duplicate"))
      assert.strictEqual((yield* store.stats({ level: "org", id: "org" }, cycle)).totalTokens, 700)
    }), 60_000)

  it.scoped("every key of one subject is in one slot (its id is the hash tag)", () =>
    Effect.gen(function*() {
      const cluster = yield* redisCluster
      const client = new Cluster(cluster.nodes.map((node) => ({ host: "127.0.0.1", port: Number(node.split(":")[1]) })))
      yield* Effect.addFinalizer(() => Effect.promise(() => client.quit()))
      const prefix = "token_usage"
      const keys = [
        RedisTokenStore.usageKey(prefix, "a:b{c}", "2025-01-01"),
        RedisTokenStore.callKey(prefix, "a:b{c}", "call-1"),
        `${RedisTokenStore.usageKey(prefix, "a:b{c}", "2025-01-01")}:holds`,
        `${RedisTokenStore.subjectBase(prefix, { level: "user", id: "a:b{c}" })}:rate:0`
      ]
      const slots = yield* Effect.forEach(keys, (key) => Effect.promise(() => client.cluster("KEYSLOT", key)))
      assert.strictEqual(new Set(slots).size, 1, keys.join(", "))
      // A client built by the caller type-checks and works.
      const store = yield* RedisTokenStore.layerClient(client, { keyPrefix: uniqueKeyPrefix("client") }).pipe(
        Layer.build,
        Effect.map((context) => context.unsafeMap.get(TokenStore.TokenStore.key) as TokenStore.Service)
      )
      assert.strictEqual(
        yield* store.record({ callId: "x", userId: "a", teamId: "b", orgId: "c", cycle: "2025-01-01", usage }),
        "recorded"
      )
    }), 60_000)
})

describe("RedisTokenStore on a Redis Cluster with a password", () => {
  it.scoped("the password in the node URLs, as an option, or from REDIS_CLUSTER_NODES; without it a clear error", () =>
    Effect.gen(function*() {
      const cluster = yield* makeRedisCluster({ password: "s3cret" })
      const keyPrefix = uniqueKeyPrefix("auth")
      const cycle = "2025-01-01"
      const record = (store: TokenStore.Service, callId: string) =>
        store.record({ callId, userId: `user-${callId}`, teamId: "team", cycle, usage })
      // In the node URLs (one of them is enough: the others are discovered).
      const inUrls = yield* RedisTokenStore.makeCluster({ nodes: [`redis://:s3cret@${cluster.nodes[0]}`], keyPrefix })
      assert.strictEqual(yield* record(inUrls, "a"), "recorded")
      // As an option.
      const asOption = yield* RedisTokenStore.makeCluster({ nodes: cluster.nodes, password: Redacted.make("s3cret"), keyPrefix })
      assert.strictEqual(yield* record(asOption, "b"), "recorded")
      assert.strictEqual((yield* asOption.stats({ level: "team", id: "team" }, cycle)).totalTokens, 14)
      // From the environment.
      const fromEnv = yield* RedisTokenStore.layerClusterConfig().pipe(
        Layer.build,
        Effect.map((context) => context.unsafeMap.get(TokenStore.TokenStore.key) as TokenStore.Service),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
          ["REDIS_CLUSTER_NODES", cluster.nodes.map((node) => `redis://:s3cret@${node}`).join(",")],
          ["REDIS_KEY_PREFIX", keyPrefix]
        ])))
      )
      assert.deepStrictEqual(yield* fromEnv.users(cycle), ["user-a", "user-b"])
      // Without it: the cluster refuses, and the error says so (without a password to hide).
      const refused = yield* Effect.exit(
        RedisTokenStore.makeCluster({ nodes: cluster.nodes, keyPrefix, connectTimeout: "1 second" })
      )
      assert.isTrue(Exit.isFailure(refused))
      if (Exit.isFailure(refused)) assert.include(String(refused.cause), "NOAUTH")
      // A wrong one: the same.
      const wrong = yield* Effect.exit(
        RedisTokenStore.makeCluster({ nodes: [`redis://:wrong@${cluster.nodes[0]}`], keyPrefix, connectTimeout: "1 second" })
      )
      assert.isTrue(Exit.isFailure(wrong))
      if (Exit.isFailure(wrong)) {
        assert.include(String(wrong.cause), "WRONGPASS")
        assert.notInclude(String(wrong.cause), "wrong@")
      }
    }), 60_000)
})

describe("RedisTokenStore on a Redis Cluster over TLS", () => {
  it.scoped("rediss:// nodes with the authority as `tls.ca`: records and reads; without it, refused", () =>
    Effect.gen(function*() {
      const cluster = yield* makeRedisCluster({ tls: true, password: "tls-pw" })
      const keyPrefix = uniqueKeyPrefix("tls")
      const cycle = "2025-01-01"
      const nodes = cluster.nodes.map((node) => `rediss://:tls-pw@${node}`)
      const store = yield* RedisTokenStore.makeCluster({ nodes, keyPrefix, tls: { ca: cluster.ca! } })
      for (const [i, userId] of ["ann", "ben", "cid", "dot"].entries()) {
        assert.strictEqual(yield* store.record({ callId: `t${i}`, userId, teamId: "crew", cycle, usage }), "recorded")
      }
      assert.deepStrictEqual(yield* store.users(cycle), ["ann", "ben", "cid", "dot"])
      assert.strictEqual((yield* store.stats({ level: "team", id: "crew" }, cycle)).totalTokens, 28)
      // Its certificate is not from an authority Node knows: refused without `ca`.
      const refused = yield* Effect.exit(RedisTokenStore.makeCluster({ nodes, keyPrefix, connectTimeout: "1 second" }))
      assert.isTrue(Exit.isFailure(refused))
      if (Exit.isFailure(refused)) assert.include(String(refused.cause), "self-signed certificate")
      // A single node over TLS, the same way.
      const single = yield* RedisTokenStore.make({ url: nodes[0]!, keyPrefix, tls: { ca: cluster.ca! } }).pipe(Effect.exit)
      assert.isTrue(Exit.isSuccess(single), String(single))
      const singleRefused = yield* RedisTokenStore.make({ url: nodes[0]!, keyPrefix, connectTimeout: "1 second" }).pipe(Effect.exit)
      assert.isTrue(Exit.isFailure(singleRefused))
      if (Exit.isFailure(singleRefused)) assert.include(String(singleRefused.cause), "certificate")
    }), 60_000)

  it.scoped("nodes that ask every client for a certificate (mutual TLS): with `tls.cert` and `tls.key`, records and reads, from options or from REDIS_TLS_*_FILE; without them, refused, saying so", () =>
    Effect.gen(function*() {
      const cluster = yield* makeRedisCluster({ tls: "mutual" })
      const keyPrefix = uniqueKeyPrefix("mtls")
      const cycle = "2025-01-01"
      const nodes = cluster.nodes.map((node) => `rediss://${node}`)
      const tls = { ca: cluster.ca!, cert: cluster.client!.cert, key: cluster.client!.key }
      const store = yield* RedisTokenStore.makeCluster({ nodes, keyPrefix, tls })
      // Users on every master (the four land on more than one slot).
      for (const [i, userId] of ["ann", "ben", "cid", "dot"].entries()) {
        assert.strictEqual(yield* store.record({ callId: `m${i}`, userId, teamId: "crew", cycle, usage }), "recorded")
      }
      assert.deepStrictEqual(yield* store.users(cycle), ["ann", "ben", "cid", "dot"])
      assert.strictEqual((yield* store.stats({ level: "team", id: "crew" }, cycle)).totalTokens, 28)
      // A single node, the same way.
      const single = yield* RedisTokenStore.make({ url: nodes[0]!, keyPrefix, tls }).pipe(Effect.exit)
      assert.isTrue(Exit.isSuccess(single), String(single))
      // From the environment: the PEM files named by REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE.
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "mtls-"))),
        (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
      )
      const files = { REDIS_TLS_CA_FILE: tls.ca, REDIS_TLS_CERT_FILE: tls.cert, REDIS_TLS_KEY_FILE: tls.key }
      for (const [variable, pem] of Object.entries(files)) fs.writeFileSync(path.join(dir, variable), pem)
      const tlsEnv = Object.fromEntries(Object.keys(files).map((variable) => [variable, path.join(dir, variable)]))
      const fromEnv = (variables: Record<string, string>) =>
        Effect.withConfigProvider(
          ConfigProvider.fromMap(new Map(Object.entries({ ...variables, ...tlsEnv, REDIS_KEY_PREFIX: keyPrefix })))
        )
      const stats = yield* TokenStore.TokenStore.pipe(
        Effect.flatMap((configured) =>
          Effect.zipRight(
            configured.record({ callId: "env", userId: "eve", cycle, usage }),
            configured.stats({ level: "user", id: "eve" }, cycle)
          )
        ),
        Effect.provide(RedisTokenStore.layerClusterConfig()),
        fromEnv({ REDIS_CLUSTER_NODES: nodes.join(",") })
      )
      assert.strictEqual(stats.totalTokens, 7)
      // A single node from REDIS_URL connects the same way (a Cluster's node: connected, not used).
      const singleFromEnv = yield* Layer.build(RedisTokenStore.layerConfig()).pipe(
        Effect.scoped,
        fromEnv({ REDIS_URL: nodes[0]! }),
        Effect.exit
      )
      assert.isTrue(Exit.isSuccess(singleFromEnv), String(singleFromEnv))
      // The authority alone, no client certificate: the nodes refuse the connection, and the layer says why.
      for (const refused of [
        yield* Effect.exit(RedisTokenStore.makeCluster({ nodes, keyPrefix, tls: { ca: cluster.ca! }, connectTimeout: "2 seconds" })),
        yield* Effect.exit(RedisTokenStore.make({ url: nodes[0]!, keyPrefix, tls: { ca: cluster.ca! }, connectTimeout: "2 seconds" }))
      ]) {
        assert.isTrue(Exit.isFailure(refused))
        // The node's TLS alert ("alert certificate required"); or, when the client's first write met the closed
        // connection before it read the alert (seen on the Cluster's startup nodes, 1 run in 4), the reset.
        assert.match(String(Exit.isFailure(refused) ? refused.cause : ""), /certificate required|ECONNRESET/)
      }
    }), 60_000)
})

// Last in the file: @effect/vitest's `layer` installs its environment on the shared `it`.
tokenStoreConformance("redis cluster", clusterStore("conformance"))
budgetConformance("redis cluster", clusterStore("budget"))
})
