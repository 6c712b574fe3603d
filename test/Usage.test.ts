import { assert, describe, it } from "@effect/vitest"
import { Events } from "../src/index.js"

describe("Events.usageFromUnknown: one normalized usage whatever the client's shape", () => {
  it("@effect/ai 0.x (flat), with cached input and reasoning", () => {
    assert.deepStrictEqual(
      Events.usageFromUnknown({
        inputTokens: 120,
        outputTokens: 30,
        totalTokens: 150,
        cachedInputTokens: 100,
        reasoningTokens: 12
      }),
      { promptTokens: 120, completionTokens: 30, totalTokens: 150, cachedTokens: 100, reasoningTokens: 12 }
    )
  })

  it("the nested shape of newer AI SDKs (Effect 4 line): totals, cache read and write, reasoning", () => {
    assert.deepStrictEqual(
      Events.usageFromUnknown({
        inputTokens: { total: 120, noCache: 15, cacheRead: 100, cacheWrite: 5 },
        outputTokens: { total: 30, text: 18, reasoning: 12 }
      }),
      {
        promptTokens: 120,
        completionTokens: 30,
        totalTokens: 150,
        cachedTokens: 100,
        cacheWriteTokens: 5,
        reasoningTokens: 12
      }
    )
  })

  it("OpenAI Chat Completions and Responses usage", () => {
    assert.deepStrictEqual(
      Events.usageFromUnknown({
        prompt_tokens: 9,
        completion_tokens: 4,
        total_tokens: 13,
        prompt_tokens_details: { cached_tokens: 6 },
        completion_tokens_details: { reasoning_tokens: 2 }
      }),
      { promptTokens: 9, completionTokens: 4, totalTokens: 13, cachedTokens: 6, reasoningTokens: 2 }
    )
    assert.deepStrictEqual(
      Events.usageFromUnknown({
        input_tokens: 11,
        output_tokens: 7,
        total_tokens: 18,
        input_tokens_details: { cached_tokens: 3 },
        output_tokens_details: { reasoning_tokens: 2 }
      }),
      { promptTokens: 11, completionTokens: 7, totalTokens: 18, cachedTokens: 3, reasoningTokens: 2 }
    )
  })

  it("Anthropic: input_tokens leaves the cache out, which is added to the prompt", () => {
    assert.deepStrictEqual(
      Events.usageFromUnknown({
        input_tokens: 20,
        cache_read_input_tokens: 100,
        cache_creation_input_tokens: 50,
        output_tokens: 10
      }),
      { promptTokens: 170, completionTokens: 10, totalTokens: 180, cachedTokens: 100, cacheWriteTokens: 50 }
    )
  })

  it("this library's own shape and the Python design's tokens_used; nothing reported is undefined", () => {
    assert.deepStrictEqual(
      Events.usageFromUnknown({ promptTokens: 1, completionTokens: 2, totalTokens: 3, estimated: true }),
      { promptTokens: 1, completionTokens: 2, totalTokens: 3, estimated: true }
    )
    assert.deepStrictEqual(
      Events.usageFromUnknown({ prompt_tokens: 5, completion_tokens: 5, tokens_used: 12 }),
      { promptTokens: 5, completionTokens: 5, totalTokens: 12 }
    )
    assert.strictEqual(Events.usageFromUnknown({ inputTokens: undefined, outputTokens: undefined }), undefined)
    assert.strictEqual(Events.usageFromUnknown(undefined), undefined)
    assert.strictEqual(Events.usageFromUnknown("12 tokens"), undefined)
    // Not a count: unreported. A total of 0 next to counts: computed.
    assert.deepStrictEqual(
      Events.usageFromUnknown({ inputTokens: -1, outputTokens: 2.5, totalTokens: 0, cachedInputTokens: "4" }),
      undefined
    )
    assert.deepStrictEqual(
      Events.usageFromUnknown({ inputTokens: 4, outputTokens: 2, totalTokens: 0 }),
      { promptTokens: 4, completionTokens: 2, totalTokens: 6 }
    )
  })
})
