import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Exit, Option } from "effect"
import * as fc from "fast-check"
import * as Cost from "../src/Cost.js"
import { Callbacks, type Events, Testing } from "../src/index.js"

const table = (input: unknown): Cost.PriceTable => Either.getOrThrow(Cost.decode(input))

const prices = table({
  "gpt-4o-mini": { input: 0.15, output: 0.6, cachedInput: 0.075 },
  "gpt-4o": { input: 2.5, output: 10 }
})

const usage = (promptTokens: number, completionTokens: number, cachedTokens?: number) => ({
  promptTokens,
  completionTokens,
  totalTokens: promptTokens + completionTokens,
  ...(cachedTokens !== undefined ? { cachedTokens } : {})
})

describe("Cost", () => {
  it("decimalOf is the exact decimal of the shortest representation", () => {
    assert.deepStrictEqual(Cost.decimalOf(0.075), { numerator: 75n, scale: 3 })
    assert.deepStrictEqual(Cost.decimalOf(2.5), { numerator: 25n, scale: 1 })
    assert.deepStrictEqual(Cost.decimalOf(10), { numerator: 10n, scale: 0 })
    assert.deepStrictEqual(Cost.decimalOf(1.5e-7), { numerator: 15n, scale: 8 })
    assert.deepStrictEqual(Cost.decimalOf(1e21), { numerator: 10n ** 21n, scale: 0 })
  })

  it("micros: integer micro-units from integer tokens and exact prices", () => {
    // 1000 × 0.15 + 500 × 0.6 = 150 + 300
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(1000, 500)), 450)
    // cached tokens are part of the prompt: 600 × 0.15 + 400 × 0.075 + 0 = 90 + 30
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(1000, 0, 400)), 120)
    // no cachedInput price: cached tokens at the input price
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o", usage(1000, 0, 400)), 2500)
    // rounding once, half up: 3 × 0.15 = 0.45 -> 0; 10 × 0.15 = 1.5 -> 2
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(3, 0)), 0)
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(10, 0)), 2)
    // more cached than prompt tokens is clamped
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(10, 0, 50)), 1)
    assert.strictEqual(Cost.microsFor(prices, "unknown", usage(10, 0)), undefined)
  })

  it("rounds once per call, never per kind of token", () => {
    // gpt-4o-mini, 9 prompt tokens of which 6 cached, no completion:
    // 3 × 0.15 + 6 × 0.075 = 0.45 + 0.45 = 0.9 micro-units -> 1 (per-group rounding: 0 + 0 = 0).
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o-mini", usage(9, 0, 6)), 1)
    // Cache writes at their own price; each input token is priced once:
    // (100 - 30 - 50) × 3 + 30 × 0.3 + 50 × 3.75 + 10 × 15 = 60 + 9 + 187.5 + 150 = 406.5 -> 407.
    const anthropic = table({ claude: { input: 3, output: 15, cachedInput: 0.3, cacheWrite: 3.75 } })
    assert.strictEqual(
      Cost.microsFor(anthropic, "claude", { ...usage(100, 10, 30), cacheWriteTokens: 50 }),
      407
    )
    // No cacheWrite price: cache writes at the input price.
    assert.strictEqual(Cost.microsFor(prices, "gpt-4o", { ...usage(1000, 0), cacheWriteTokens: 400 }), 2500)
  })

  it("micros equals exact arithmetic for short-decimal prices (the plain-number path)", () =>
    fc.assert(
      fc.property(
        // Prices as providers publish them: a few digits, up to 4 decimals (0.075, 2.5, 0.0375...).
        // Bounded so that every case stays on the plain-number path (asserted below).
        fc.array(fc.tuple(fc.nat(200_000), fc.integer({ min: 0, max: 4 })), { minLength: 4, maxLength: 4 }),
        fc.nat(200_000),
        fc.nat(200_000),
        fc.nat(200_000),
        fc.nat(200_000),
        (digits, prompt, completion, cachedTokens, cacheWriteTokens) => {
          const [input, output, cachedInput, cacheWrite] = digits.map(([n, k]) => n / 10 ** k) as [
            number,
            number,
            number,
            number
          ]
          const t = table({ m: { input, output, cachedInput, cacheWrite } })
          const cached = Math.min(cachedTokens, prompt)
          const written = Math.min(cacheWriteTokens, prompt - cached)
          const terms = [
            [prompt - cached - written, input],
            [cached, cachedInput],
            [written, cacheWrite],
            [completion, output]
          ] as const
          const scale = Math.max(...terms.map(([, price]) => Cost.decimalOf(price).scale))
          const total = terms.reduce((n, [tokens, price]) => {
            const d = Cost.decimalOf(price)
            return n + BigInt(tokens) * d.numerator * 10n ** BigInt(scale - d.scale)
          }, 0n)
          // The case is one the plain-number path computes (scale and sum small enough).
          if (scale > 15 || total > BigInt(Number.MAX_SAFE_INTEGER)) return false
          const unit = 10n ** BigInt(scale)
          const expected = Number(total / unit + (2n * (total % unit) >= unit ? 1n : 0n))
          return Cost.microsFor(t, "m", { ...usage(prompt, completion, cachedTokens), cacheWriteTokens }) === expected
        }
      ),
      { numRuns: 2_000 }
    ))

  it("no float drift: summing per-call micros equals the exact total", () =>
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(200_000), fc.nat(50_000)), { minLength: 1, maxLength: 50 }),
        (calls) => {
          // With prices in tenths of a micro-unit per token, 10 calls of 1 token are exact integers.
          const summed = calls.reduce((n, [p, c]) => n + Cost.microsFor(prices, "gpt-4o", usage(p, c))!, 0)
          const exact = calls.reduce((n, [p, c]) => n + (p * 25 + c * 100) / 10, 0)
          // gpt-4o: 2.5 and 10 per million tokens; per call rounding happens only on halves
          const rounded = calls.reduce((n, [p, c]) => n + Math.round((p * 25 + c * 100) / 10), 0)
          return Number.isInteger(summed) && summed === rounded && Math.abs(summed - exact) <= calls.length / 2
        }
      )
    ))

  it("micros equals exact rational arithmetic for any prices and token counts", () =>
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { minLength: 3, maxLength: 3 }),
        fc.nat(1e9),
        fc.nat(1e9),
        fc.nat(1e9),
        ([input, output, cachedInput], prompt, completion, cachedTokens) => {
          const t = table({ m: { input: input!, output: output!, cachedInput: cachedInput! } })
          const cached = Math.min(cachedTokens, prompt)
          // reference: exact rationals with BigInt, rounded half up
          const terms = [[prompt - cached, input!], [cached, cachedInput!], [completion, output!]] as const
          const scale = Math.max(...terms.map(([, price]) => Cost.decimalOf(price).scale))
          const total = terms.reduce((n, [tokens, price]) => {
            const d = Cost.decimalOf(price)
            return n + BigInt(tokens) * d.numerator * 10n ** BigInt(scale - d.scale)
          }, 0n)
          const unit = 10n ** BigInt(scale)
          const expected = Number(total / unit + (2n * (total % unit) >= unit ? 1n : 0n))
          return Cost.microsFor(t, "m", usage(prompt, completion, cachedTokens)) === expected
        }
      )
    ))

  it("microsOf recovers the integer micro-units of the estimate exactly", () =>
    fc.assert(
      fc.property(fc.nat(5_000_000), fc.nat(5_000_000), (p, c) => {
        const response = Cost.withEstimate(prices, "gpt-4o-mini", { content: "", usage: usage(p, c) })
        const event: Events.EndEvent = {
          _tag: "End",
          call: { callId: "c", provider: "openai", model: "gpt-4o-mini", tags: [], metadata: {}, startedAt: 0 },
          messages: [],
          response,
          durationMs: 1
        }
        return Cost.microsOf(event) === Cost.microsFor(prices, "gpt-4o-mini", usage(p, c))
      })
    ))

  it("decode rejects negative, non-finite and non-numeric prices and empty model names", () => {
    const bad = [
      { m: { input: -1, output: 1 } },
      { m: { input: Number.POSITIVE_INFINITY, output: 1 } },
      { m: { input: Number.NaN, output: 1 } },
      { m: { input: "1", output: 1 } },
      { m: { input: 1 } },
      { m: { input: 1, output: 1, cachedInput: -0.5 } },
      { "": { input: 1, output: 1 } },
      { m: { input: 1, output: 1, extra: 2 } },
      [],
      "prices"
    ]
    for (const input of bad) assert.isTrue(Either.isLeft(Cost.decode(input)), JSON.stringify(input))
    assert.isTrue(Either.isRight(Cost.decode({ m: { input: 0, output: 0 } })))
  })

  it("withEstimate: priced by the requested model, else the response's model; never overrides", () => {
    const priced = Cost.withEstimate(prices, "gpt-4o-mini", { content: "", usage: usage(1000, 500) })
    assert.strictEqual(priced.costEstimate, 0.00045)
    const byResponse = Cost.withEstimate(prices, "alias", { content: "", model: "gpt-4o", usage: usage(1000, 0) })
    assert.strictEqual(byResponse.costEstimate, 0.0025)
    const unknown = { content: "", usage: usage(1000, 0) }
    assert.strictEqual(Cost.withEstimate(prices, "other", unknown), unknown)
    const noUsage = { content: "" }
    assert.strictEqual(Cost.withEstimate(prices, "gpt-4o", noUsage), noUsage)
    const given = { content: "", usage: usage(1000, 0), costEstimate: 7 }
    assert.strictEqual(Cost.withEstimate(prices, "gpt-4o", given), given)
  })
})

describe("instrument with a price table", () => {
  const response = { content: "ok", usage: usage(2000, 1000) }

  it.effect("the end event carries the cost estimate; the call's value is untouched", () =>
    Effect.gen(function*() {
      const result = yield* Effect.succeed(response).pipe(
        Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini" }),
        Cost.withPriceTable(prices)
      )
      assert.strictEqual(result, response)
      assert.isUndefined((result as { costEstimate?: number }).costEstimate)
      const [, end] = (yield* Testing.events) as [Events.StartEvent, Events.EndEvent]
      // 2000 × 0.15 + 1000 × 0.6 = 900 micro-units
      assert.strictEqual(end.response.costEstimate, 0.0009)
      assert.strictEqual(Cost.microsOf(end), 900)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("no estimate without a table, for an unknown model, or without usage", () =>
    Effect.gen(function*() {
      yield* Effect.succeed(response).pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini" }))
      yield* Effect.succeed(response).pipe(
        Callbacks.instrument({ provider: "openai", model: "mystery" }),
        Cost.withPriceTable(prices)
      )
      yield* Effect.succeed({ content: "ok" }).pipe(
        Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini" }),
        Cost.withPriceTable(prices)
      )
      const ends = (yield* Testing.events).filter((e): e is Events.EndEvent => e._tag === "End")
      assert.strictEqual(ends.length, 3)
      for (const end of ends) {
        assert.isUndefined(end.response.costEstimate)
        assert.isUndefined(Cost.microsOf(end))
      }
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("begin/finish (streams) applies the same estimate", () =>
    Effect.gen(function*() {
      const active = yield* Callbacks.begin({ provider: "openai", model: "gpt-4o" }).pipe(
        Cost.withPriceTable(prices)
      )
      assert.isTrue(Option.isSome(active))
      if (Option.isNone(active)) return
      yield* active.value.finish(Exit.succeed(undefined), { response: { content: "streamed", usage: usage(1000, 100) } })
      const [, end] = (yield* Testing.events) as [Events.StartEvent, Events.EndEvent]
      // 1000 × 2.5 + 100 × 10
      assert.strictEqual(Cost.microsOf(end), 3500)
    }).pipe(Effect.provide(Testing.layer())))
})
