/**
 * The SQL store's reservations against the in-memory store as the reference,
 * on random workloads under the TestClock. The SQL store decides the
 * reservations made in one event-loop turn in one transaction, in memory
 * (see `reserveBatch`); the reference decides the same ones one after the
 * other, in the order they were made. A case is a few steps: a batch of
 * reservations made at once (3 users, 2 teams, a few call ids so that
 * retries of one call meet, limits, holds that expire, rate limits), or
 * records and releases made one at a time, the clock moved between steps.
 * Compared after each step: every outcome, each subject's held and used
 * tokens, and the cycle's users (accounts made for refused reservations are
 * gone). Against a SQLite file always and PostgreSQL when there is one.
 * `SQL_RESERVATION_RUNS` sets the number of cases (default 60 per database),
 * `SQL_RESERVATION_SEED` their seed (a failure names it).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { describe, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Fiber, Layer, TestClock, TestContext } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import * as TokenStore from "../../src/TokenStore.js"
import { bannerWithoutPostgres, postgresClient, skipWithoutPostgres } from "../support/postgres.js"
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

const otherOf: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ _tag: fc.constant("release" as const), ...who }),
  fc.record({ _tag: fc.constant("record" as const), ...who, tokens: fc.integer({ min: 1, max: 300 }) })
)

const limitOf = fc.option(fc.integer({ min: 0, max: 1_500 }), { nil: undefined, freq: 3 })

const caseOf: fc.Arbitrary<Case> = fc.record({
  teams: fc.array(fc.array(fc.option(fc.integer({ min: 0, max: 1 }), { nil: undefined }), { minLength: 5, maxLength: 5 }), {
    minLength: 3,
    maxLength: 3
  }),
  userLimits: fc.array(limitOf, { minLength: 3, maxLength: 3 }),
  teamLimits: fc.array(limitOf, { minLength: 2, maxLength: 2 }),
  steps: fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.record({ advance: fc.integer({ min: 0, max: 90_000 }), atOnce: fc.constant(true), ops: fc.array(reserveOf, { minLength: 1, maxLength: 14 }) }) },
      { weight: 1, arbitrary: fc.record({ advance: fc.integer({ min: 0, max: 90_000 }), atOnce: fc.constant(false), ops: fc.array(otherOf, { minLength: 1, maxLength: 4 }) }) }
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
    const callId = (op: Who) => `call-${op.user}-${op.call}`
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
    const seen: Array<unknown> = []
    for (const step of c.steps) {
      yield* TestClock.adjust(step.advance)
      // At once: forked in order, each reaches the store's queue before the next starts.
      const outcomes = step.atOnce
        ? yield* Effect.flatMap(
          Effect.forEach(step.ops, (op) => Effect.fork(Effect.either(run(op)))),
          (fibers) => Effect.forEach(fibers, Fiber.join)
        )
        : yield* Effect.forEach(step.ops, (op) => Effect.either(run(op)))
      const accounts: Array<unknown> = []
      for (let i = 0; i < 3; i++) {
        const stats = yield* store.stats(user(i), cycle)
        accounts.push([stats.heldTokens, stats.totalTokens])
      }
      for (let i = 0; i < 2; i++) {
        const stats = yield* store.stats({ level: "team", id: team(i) }, cycle)
        accounts.push([stats.heldTokens, stats.totalTokens])
      }
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
    return seen
  })

const compare = (sql: TokenStore.Service) => (c: Case) =>
  Effect.gen(function*() {
    // Each on a TestClock of its own, from 0: the rate windows' times are the same.
    const reference = yield* play(yield* TokenStore.makeMemory(), c, freshId("ref")).pipe(Effect.provide(TestContext.TestContext))
    const real = yield* play(sql, c, freshId("sql")).pipe(Effect.provide(TestContext.TestContext))
    const differences: Array<string> = []
    real.forEach((step, i) => {
      if (JSON.stringify(step) !== JSON.stringify(reference[i])) {
        differences.push(`step ${i}: ${JSON.stringify(step)}\n    vs ${JSON.stringify(reference[i])}`)
      }
    })
    return differences
  })

const runs = Number(process.env["SQL_RESERVATION_RUNS"] ?? 60)
const seed = Number(process.env["SQL_RESERVATION_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

const suite = (name: string, client: Layer.Layer<SqlClient.SqlClient>) =>
  it.effect(
    `${name}: the same outcomes, holds, usage and users as the in-memory store, step by step (${runs} random cases)`,
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlTokenStore.make()
        yield* compareCases({
          cases: fc.sample(caseOf, { numRuns: runs, seed }),
          compare: compare(sql),
          seed: `SQL_RESERVATION_SEED=${seed}`,
          concurrency: Number(process.env["SQL_RESERVATION_CONCURRENCY"] ?? 4)
        })
      }).pipe(Effect.provide(client)),
    Math.max(120_000, runs * 2_000)
  )

bannerWithoutPostgres("test/layers/SqlReservations.reference.test.ts (PostgreSQL)")

describe("SQL reservations against the in-memory store", () => {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "effect-llm-callbacks-reservations-"))
  suite("SQLite", SqliteClient.layer({ filename: path.join(directory, "reservations.sqlite") }).pipe(Layer.orDie))
  if (!skipWithoutPostgres) suite("PostgreSQL", postgresClient)
})
