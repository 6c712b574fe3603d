/**
 * The shared stores' reservations, records and releases against the
 * in-memory store as the reference, on random workloads under the TestClock:
 * the SQL store (a SQLite file always, PostgreSQL when there is one) and the
 * Redis store (a single node and a Cluster, when redis-server is there; the
 * Cluster without team limits, see its suite). They decide the
 * reservations made in one event-loop turn together (SQL: in one transaction,
 * in memory, see `reserveBatch`; Redis: in one script call); the reference
 * decides the same ones one after the other, in the order they were made. A
 * case is a few steps: a batch of reservations made at once (3 users, 2
 * teams, a few call ids so that retries of one call meet, in some cases call
 * ids given to several users, limits, holds that expire, rate limits), a
 * batch of records made at once (one call's twice at times), or records and
 * releases made one at a time, the clock moved between steps.
 * Compared after each step: every outcome, each subject's held and used
 * tokens, and the cycle's users (accounts made for refused reservations are
 * gone); and, past every hold's TTL, that nothing is held. `RESERVATION_RUNS`
 * sets the number of cases (default 60 per store), `RESERVATION_SEED` their
 * seed (a failure names it).
 */
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { describe, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Fiber, Layer, TestClock, TestContext } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import * as TokenStore from "../../src/TokenStore.js"
import { bannerWithoutPostgres, postgresClient, skipWithoutPostgres } from "../support/postgres.js"
import { bannerWithoutRedis, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { redisCluster } from "../support/redisCluster.js"
import { compareCases } from "../support/referenceCases.js"
import { freshId } from "../support/tokenStoreConformance.js"

/** A call of a user: its id and its team (the case's `teams`) follow from the two. */
interface Who {
  readonly user: number
  readonly call: number
}

type Op =
  | Who & {
    readonly _tag: "reserve"
    readonly tokens: number
    readonly ttlSeconds: number
    readonly rate: TokenStore.RateLimit | undefined
  }
  | Who & { readonly _tag: "release" }
  | Who & { readonly _tag: "record"; readonly tokens: number }

interface Step {
  /** Milliseconds the clock moves before the step. */
  readonly advance: number
  /** Reservations made at once, or other operations made one after the other. */
  readonly atOnce: boolean
  readonly ops: ReadonlyArray<Op>
}

interface Case {
  /** The team of each user's calls, by call: none, 0 or 1 (a call id names one call: its user and team). */
  readonly teams: ReadonlyArray<ReadonlyArray<number | undefined>>
  /**
   * Call ids given to several users (a caller's bug the stores must survive):
   * the users' calls of one number share an id, and may share a team.
   */
  readonly sharedIds: boolean
  readonly userLimits: ReadonlyArray<number | undefined>
  readonly teamLimits: ReadonlyArray<number | undefined>
  readonly steps: ReadonlyArray<Step>
}

const who = {
  user: fc.integer({ min: 0, max: 2 }),
  call: fc.integer({ min: 0, max: 4 })
}

const reserveOf: fc.Arbitrary<Op> = fc.record({
  _tag: fc.constant("reserve" as const),
  ...who,
  tokens: fc.integer({ min: 1, max: 400 }),
  ttlSeconds: fc.integer({ min: 1, max: 120 }),
  rate: fc.option(
    fc.oneof(
      fc.record({ requestsPerMinute: fc.integer({ min: 1, max: 4 }) }),
      fc.record({ tokensPerMinute: fc.integer({ min: 50, max: 800 }) })
    ),
    { nil: undefined, freq: 3 }
  )
})

const recordOf: fc.Arbitrary<Op> = fc.record({
  _tag: fc.constant("record" as const),
  ...who,
  tokens: fc.integer({ min: 1, max: 300 })
})

const otherOf: fc.Arbitrary<Op> = fc.oneof(fc.record({ _tag: fc.constant("release" as const), ...who }), recordOf)

const limitOf = fc.option(fc.integer({ min: 0, max: 1_500 }), { nil: undefined, freq: 3 })

const caseOf: fc.Arbitrary<Case> = fc.record({
  teams: fc.array(fc.array(fc.option(fc.integer({ min: 0, max: 1 }), { nil: undefined }), { minLength: 5, maxLength: 5 }), {
    minLength: 3,
    maxLength: 3
  }),
  sharedIds: fc.boolean(),
  userLimits: fc.array(limitOf, { minLength: 3, maxLength: 3 }),
  teamLimits: fc.array(limitOf, { minLength: 2, maxLength: 2 }),
  steps: fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.record({ advance: fc.integer({ min: 0, max: 90_000 }), atOnce: fc.constant(true), ops: fc.array(reserveOf, { minLength: 1, maxLength: 14 }) }) },
      { weight: 1, arbitrary: fc.record({ advance: fc.integer({ min: 0, max: 90_000 }), atOnce: fc.constant(false), ops: fc.array(otherOf, { minLength: 1, maxLength: 4 }) }) },
      // Records made at once (batched per turn by the shared stores), the same call's among them at times.
      { weight: 1, arbitrary: fc.record({ advance: fc.integer({ min: 0, max: 90_000 }), atOnce: fc.constant(true), ops: fc.array(recordOf, { minLength: 2, maxLength: 10 }) }) }
    ),
    { minLength: 1, maxLength: 6 }
  )
})

const cycle = "2026-12-01"

/** Runs a case on `store`, subjects named after `prefix`; returns what was seen after each step. */
const play = (store: TokenStore.Service, c: Case, prefix: string) =>
  Effect.gen(function*() {
    const user = (i: number) => `${prefix}-user-${i}`
    const team = (i: number) => `${prefix}-team-${i}`
    const teamOf = (op: Who) => c.teams[op.user]![op.call]
    const subjects = (op: Who): ReadonlyArray<TokenStore.Subject> => {
      const t = teamOf(op)
      return t === undefined ? [{ level: "user", id: user(op.user) }] : [
        { level: "user", id: user(op.user) },
        { level: "team", id: team(t) }
      ]
    }
    const callId = (op: Who) => c.sharedIds ? `call-${op.call}` : `call-${op.user}-${op.call}`
    for (const [i, limit] of c.userLimits.entries()) if (limit !== undefined) yield* store.setLimit(user(i), cycle, limit)
    for (const [i, limit] of c.teamLimits.entries()) {
      if (limit !== undefined) yield* store.setLimit({ level: "team", id: team(i) }, cycle, limit)
    }
    const run = (op: Op): Effect.Effect<unknown, TokenStore.TokenStoreError> => {
      switch (op._tag) {
        case "reserve":
          return store.reserve({
            callId: callId(op),
            cycle,
            subjects: subjects(op),
            tokens: op.tokens,
            holdTtlMillis: op.ttlSeconds * 1_000,
            rateLimits: op.rate === undefined ? undefined : { user: op.rate }
          })
        case "release":
          return store.release({ callId: callId(op), cycle, subjects: subjects(op) })
        case "record":
          return store.record({
            callId: callId(op),
            userId: user(op.user),
            teamId: teamOf(op) === undefined ? undefined : team(teamOf(op)!),
            cycle,
            usage: { promptTokens: op.tokens, completionTokens: 0, totalTokens: op.tokens }
          })
      }
    }
    const accountsNow = Effect.gen(function*() {
      const accounts: Array<readonly [held: number, used: number]> = []
      for (let i = 0; i < 3; i++) {
        const stats = yield* store.stats(user(i), cycle)
        accounts.push([stats.heldTokens, stats.totalTokens])
      }
      for (let i = 0; i < 2; i++) {
        const stats = yield* store.stats({ level: "team", id: team(i) }, cycle)
        accounts.push([stats.heldTokens, stats.totalTokens])
      }
      return accounts
    })
    const seen: Array<Seen> = []
    for (const step of c.steps) {
      yield* TestClock.adjust(step.advance)
      // At once: forked in order, each reaches the store's queue before the next starts.
      const outcomes = step.atOnce
        ? yield* Effect.flatMap(
          Effect.forEach(step.ops, (op) => Effect.fork(Effect.either(run(op)))),
          (fibers) => Effect.forEach(fibers, Fiber.join)
        )
        : yield* Effect.forEach(step.ops, (op) => Effect.either(run(op)))
      const accounts = yield* accountsNow
      const users = (yield* store.users(cycle)).filter((id) => id.startsWith(`${prefix}-`)).map((id) => id.slice(prefix.length))
      seen.push({
        outcomes: outcomes.map((o) =>
          o._tag === "Left"
            ? `error ${o.left.reason}`
            : JSON.stringify(o.right, (key, value) => key === "id" && typeof value === "string" ? value.slice(prefix.length) : value)
        ),
        accounts,
        users
      })
    }
    // Past every hold's TTL (120 s at most), nothing is held any more.
    yield* TestClock.adjust(121_000)
    return { seen, afterExpiry: yield* accountsNow }
  })

interface Seen {
  readonly outcomes: ReadonlyArray<string>
  readonly accounts: ReadonlyArray<readonly [held: number, used: number]>
  readonly users: ReadonlyArray<string>
}

/**
 * What the stores agree on when call ids are given to several users: each
 * user's usage (records are counted once per user and call id). A team's
 * figures are not compared then: the memory store (and Redis) counts a
 * team's usage once per call id, the SQL store once per user and call id,
 * and reservations refused at the team differ in turn.
 */
const usersUsage = (seen: Seen) => seen.accounts.slice(0, 3).map(([, used]) => used)

const compare = (name: string, store: TokenStore.Service) => (c: Case) =>
  Effect.gen(function*() {
    // Each on a TestClock of its own, from 0: the rate windows' times are the same.
    const reference = yield* play(yield* TokenStore.makeMemory(), c, freshId("ref")).pipe(Effect.provide(TestContext.TestContext))
    const real = yield* play(store, c, freshId(name)).pipe(Effect.provide(TestContext.TestContext))
    const differences: Array<string> = []
    real.seen.forEach((step, i) => {
      const [mine, theirs] = c.sharedIds ? [usersUsage(step), usersUsage(reference.seen[i]!)] : [step, reference.seen[i]]
      if (JSON.stringify(mine) !== JSON.stringify(theirs)) {
        differences.push(`step ${i}: ${JSON.stringify(mine)}\n    vs ${JSON.stringify(theirs)}`)
      }
    })
    // Whatever the callers did, no hold outlives its TTL.
    for (const [which, afterExpiry] of [[name, real.afterExpiry], ["memory", reference.afterExpiry]] as const) {
      if (afterExpiry.some(([held]) => held !== 0)) {
        differences.push(`${which}: tokens still held once every hold expired: ${JSON.stringify(afterExpiry)}`)
      }
    }
    return differences
  })

const env = (name: string): string | undefined => process.env[name] ?? process.env[`SQL_${name}`]
const runs = Number(env("RESERVATION_RUNS") ?? 60)
const seed = Number(env("RESERVATION_SEED") ?? Math.floor(Math.random() * 2 ** 31))

const suite = <E, R>(
  name: string,
  store: Effect.Effect<TokenStore.Service, E, R>,
  provide: Layer.Layer<R, E>,
  options: { readonly cases?: (c: Case) => Case; readonly title?: string } = {}
) =>
  it.scoped(
    `${name}: the same outcomes, holds, usage and users as the in-memory store, step by step (${runs} random cases${
      options.title ?? ""
    })`,
    () =>
      Effect.gen(function*() {
        yield* compareCases({
          cases: fc.sample(caseOf, { numRuns: runs, seed }).map(options.cases ?? ((c) => c)),
          compare: compare(name, yield* store),
          seed: `RESERVATION_SEED=${seed}`,
          concurrency: Number(env("RESERVATION_CONCURRENCY") ?? 4)
        })
      }).pipe(Effect.provide(provide)),
    Math.max(120_000, runs * 2_000)
  )

bannerWithoutPostgres("test/layers/Reservations.reference.test.ts (PostgreSQL)")
bannerWithoutRedis("test/layers/Reservations.reference.test.ts (Redis)")

describe("SQL reservations against the in-memory store", () => {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "effect-llm-callbacks-reservations-"))
  const sqlite = SqliteClient.layer({ filename: path.join(directory, "reservations.sqlite") }).pipe(Layer.orDie)
  suite("SQLite", SqlTokenStore.make(), sqlite)
  if (!skipWithoutPostgres) suite("PostgreSQL", SqlTokenStore.make(), postgresClient)
})

describe.skipIf(skipWithoutRedis)("Redis reservations against the in-memory store", () => {
  suite(
    "Redis",
    TokenStore.TokenStore,
    Layer.unwrapEffect(
      Effect.sync(() => RedisTokenStore.layer({ url: redisUrl(), keyPrefix: uniqueKeyPrefix("reservations") }))
    )
  )
  // On a Cluster a reservation's slot groups (a user's keys, a team's) are
  // held one after the other, the user's first, so that reservations of two
  // users made at once reach their team in an order of their own; a team
  // limit could then refuse a different one. Without team limits (and with
  // call ids of one user each), every decision is the user's: the same as the
  // reference's.
  suite(
    "Redis Cluster",
    TokenStore.TokenStore,
    Layer.unwrapScoped(
      Effect.map(redisCluster, (cluster) =>
        RedisTokenStore.layerCluster({ nodes: cluster.nodes, keyPrefix: uniqueKeyPrefix("reservations") }))
    ),
    { cases: (c) => ({ ...c, sharedIds: false, teamLimits: c.teamLimits.map(() => undefined) }), title: ", no team limits" }
  )
})
