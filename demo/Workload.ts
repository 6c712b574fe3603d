/**
 * The demo's workload: which user calls which model with what prompt, whether the call streams, and what
 * the mock OpenAI server answers. Everything is a pure function of the seed and the call's index, so two
 * runs with the same flags make the same calls and get the same answers, whatever order the concurrent
 * requests reach the server in.
 *
 * The server finds the call a request belongs to by the `[demo-call N]` tag at the end of its prompt.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as MockOpenAiServer from "../test/support/MockOpenAiServer.js"

// =============================================================================
// Models
// =============================================================================

/**
 * The models of the workload, with their share of the calls.
 *
 * @since 0.1.0
 * @category constants
 */
export const models = ["gpt-4o-mini", "gpt-4o", "o3-mini"] as const

/**
 * One of the workload's {@link models}.
 *
 * @since 0.1.0
 * @category models
 */
export type ModelName = typeof models[number]

/**
 * Prices per million tokens (list prices at the time of writing), for the `Cost` layer.
 *
 * @since 0.1.0
 * @category constants
 */
export const prices = {
  "gpt-4o-mini": { input: 0.15, output: 0.6, cachedInput: 0.075 },
  "gpt-4o": { input: 2.5, output: 10, cachedInput: 1.25 },
  "o3-mini": { input: 1.1, output: 4.4, cachedInput: 0.55 }
} as const

/**
 * What the mock server does with a call's request.
 *
 * @since 0.1.0
 * @category models
 */
export type Reply =
  | {
    readonly _tag: "Text"
    readonly text: string
    /** The reasoning summary the model streams first (o3-mini). */
    readonly reasoning: string | undefined
    /** The tool calls the model makes (`lookup_order`), resolved by the demo's toolkit. */
    readonly toolCalls: ReadonlyArray<MockOpenAiServer.MockToolCall>
    /** `undefined`: the response carries no usage (the detailed token handler estimates it). */
    readonly usage: MockOpenAiServer.MockUsage | undefined
    readonly delayMs: number
  }
  | { readonly _tag: "HttpError"; readonly status: 429 | 500 }

/**
 * One call of the workload.
 *
 * @since 0.1.0
 * @category models
 */
export interface PlannedCall {
  readonly index: number
  readonly userId: string
  readonly model: ModelName
  readonly streamed: boolean
  readonly system: string
  readonly prompt: string
  /** The call offers the model the demo's toolkit (`lookup_order`). */
  readonly tools: boolean
  readonly reply: Reply
}

/**
 * Options of {@link plan}.
 *
 * @since 0.1.0
 * @category models
 */
export interface PlanOptions {
  readonly calls: number
  readonly users: number
  readonly seed: number
  /** Share of calls the server answers with a 429 or a 500. Default 0.08. */
  readonly errorRate?: number | undefined
  /** Share of successful calls whose response carries no usage. Default 0.1. */
  readonly noUsageRate?: number | undefined
  /** Share of streamed calls. Default 1/3. */
  readonly streamRate?: number | undefined
}

// =============================================================================
// Randomness
// =============================================================================

/**
 * A small seeded generator (mulberry32): numbers in [0, 1).
 *
 * @since 0.1.0
 * @category constructors
 */
export const random = (seed: number): () => number => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * A number in [0, 1) determined by its keys: the same keys give the same number.
 *
 * @since 0.1.0
 * @category constructors
 */
export const hash = (...keys: ReadonlyArray<number>): number => {
  let h = 0x811C9DC5
  for (const key of keys) h = Math.imul(h ^ (key >>> 0), 0x01000193) >>> 0
  return random(h)()
}

const between = (next: () => number, min: number, max: number): number => min + Math.floor(next() * (max - min + 1))

// =============================================================================
// Texts
// =============================================================================

const tasks: ReadonlyArray<string> = [
  "Summarise this support ticket in two sentences: the customer cannot reset their password since the last update.",
  "Translate to French: our office will be closed on Friday for scheduled maintenance.",
  "Write a SQL query that lists the ten customers with the highest order totals this quarter.",
  "Explain the difference between a mutex and a semaphore to a new engineer.",
  "Draft a polite reply declining a meeting invitation for next Tuesday afternoon.",
  "Classify the sentiment of this review: the battery life is great but the screen scratches easily.",
  "Suggest three names for a small coffee shop that also sells second-hand books.",
  "List the main risks of splitting a monolith into microservices, most important first.",
  "Rewrite this sentence in plain English: the aforementioned deliverables shall be remitted forthwith.",
  "Give a step-by-step plan to debug a memory leak in a long-running Node.js service."
]

const systems: Readonly<Record<ModelName, string>> = {
  "gpt-4o-mini": "You are a concise assistant for a customer support team.",
  "gpt-4o": "You are a careful senior engineer. Answer precisely and mention trade-offs.",
  "o3-mini": "You are a reasoning assistant. Think through the problem before answering."
}

const vocabulary = (
  "the a of to and in for is on that with as it be by this are from at or an was we can will not if " +
  "request customer service update password reset query order total engineer thread lock resource team " +
  "meeting reply schedule review battery screen coffee books risk service boundary data latency memory " +
  "leak heap snapshot profile step first then finally consider because however usually therefore example"
).split(" ")

const replyText = (next: () => number, words: number): string => {
  const out: Array<string> = []
  for (let i = 0; i < words; i++) out.push(vocabulary[Math.floor(next() * vocabulary.length)]!)
  const first = out[0]!
  out[0] = first.charAt(0).toUpperCase() + first.slice(1)
  return `${out.join(" ")}.`
}

/**
 * The tag that ties a request to its call.
 *
 * @since 0.1.0
 * @category utils
 */
export const tagOf = (index: number): string => `[demo-call ${index}]`

const tagPattern = /\[demo-call (\d+)\]/

/**
 * The index of the call a request's text belongs to.
 *
 * @since 0.1.0
 * @category utils
 */
export const indexOf = (text: string): number | undefined => {
  const match = tagPattern.exec(text)
  return match === null ? undefined : Number(match[1])
}

/**
 * The user id of the n-th user (from 0): `user-01`, `user-02`, ..., padded to the width of the last one.
 *
 * @since 0.1.0
 * @category utils
 */
export const userId = (n: number, users: number): string =>
  `user-${String(n + 1).padStart(Math.max(2, String(users).length), "0")}`

/** Tokens a text of `words` words takes, roughly, as OpenAI's tokenizers count English. */
const tokensOf = (words: number): number => Math.ceil(words * 1.3)

const wordCount = (text: string): number => MockOpenAiServer.countWords(text)

// =============================================================================
// Plan
// =============================================================================

/**
 * The calls of a run. Every user gets at least one call when there are at least as many calls as users;
 * after that, some users call more than others, as in real traffic.
 *
 * @since 0.1.0
 * @category constructors
 */
export const plan = (options: PlanOptions): ReadonlyArray<PlannedCall> => {
  const errorRate = options.errorRate ?? 0.08
  const noUsageRate = options.noUsageRate ?? 0.1
  const streamRate = options.streamRate ?? 1 / 3
  const calls: Array<PlannedCall> = []
  for (let index = 0; index < options.calls; index++) {
    const next = random(Math.floor(hash(options.seed, index) * 4294967296))
    const user = index < options.users ? index : Math.floor(next() ** 1.6 * options.users)
    const pick = next()
    const model: ModelName = pick < 0.5 ? "gpt-4o-mini" : pick < 0.8 ? "gpt-4o" : "o3-mini"
    const streamed = next() < streamRate
    const prompt = `${tasks[Math.floor(next() * tasks.length)]!} ${tagOf(index)}`
    const system = systems[model]
    // A quarter of the support assistant's calls look an order up with a tool.
    const tools = model === "gpt-4o-mini" && next() < 0.25
    let reply: Reply
    if (next() < errorRate) {
      reply = { _tag: "HttpError", status: next() < 0.6 ? 429 : 500 }
    } else {
      const words = model === "gpt-4o-mini" ? between(next, 20, 60) : between(next, 40, 100)
      const text = replyText(next, words)
      const reasoning = model === "o3-mini" ? replyText(next, between(next, 8, 20)) : undefined
      const toolCalls = tools ? [{ name: "lookup_order", arguments: { orderId: `ord-${1000 + index}` } }] : []
      // The chat format adds a few tokens per message; the server's count is what it bills.
      const inputTokens = tokensOf(wordCount(system) + wordCount(prompt)) + 7
      const reasoningTokens = model === "o3-mini" ? between(next, 64, 512) : 0
      const cachedTokens = model === "gpt-4o" && next() < 0.3 ? Math.floor(inputTokens / 2) : 0
      const usage: MockOpenAiServer.MockUsage | undefined = next() < noUsageRate ? undefined : {
        inputTokens,
        outputTokens: tokensOf(wordCount(text)) + reasoningTokens,
        ...(cachedTokens > 0 ? { cachedTokens } : {}),
        ...(reasoningTokens > 0 ? { reasoningTokens } : {})
      }
      const delayMs = model === "gpt-4o-mini"
        ? between(next, 10, 60)
        : model === "gpt-4o"
        ? between(next, 30, 120)
        : between(next, 60, 200)
      reply = { _tag: "Text", text, reasoning, toolCalls, usage, delayMs }
    }
    calls.push({ index, userId: userId(user, options.users), model, streamed, system, prompt, tools, reply })
  }
  return calls
}

// =============================================================================
// Server side
// =============================================================================

/**
 * What the mock server actually sent, counted as it answered.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServerTally {
  readonly requests: number
  /** Requests that named no call of the plan (answered with a 400). */
  readonly unknown: number
  readonly errors: number
  readonly errorsByStatus: Readonly<Record<string, number>>
  readonly texts: number
  readonly textsWithoutUsage: number
  /** Sum of `input + output` tokens of the responses that reported usage. */
  readonly reportedTokens: number
}

/**
 * The tally before the first request.
 *
 * @since 0.1.0
 * @category constructors
 */
export const emptyTally: ServerTally = {
  requests: 0,
  unknown: 0,
  errors: 0,
  errorsByStatus: {},
  texts: 0,
  textsWithoutUsage: 0,
  reportedTokens: 0
}

const count = (tally: ServerTally, reply: Reply | undefined): ServerTally => {
  const requests = tally.requests + 1
  if (reply === undefined) return { ...tally, requests, unknown: tally.unknown + 1 }
  if (reply._tag === "HttpError") {
    const key = String(reply.status)
    return {
      ...tally,
      requests,
      errors: tally.errors + 1,
      errorsByStatus: { ...tally.errorsByStatus, [key]: (tally.errorsByStatus[key] ?? 0) + 1 }
    }
  }
  return {
    ...tally,
    requests,
    texts: tally.texts + 1,
    textsWithoutUsage: tally.textsWithoutUsage + (reply.usage === undefined ? 1 : 0),
    reportedTokens: tally.reportedTokens +
      (reply.usage === undefined ? 0 : reply.usage.inputTokens + reply.usage.outputTokens)
  }
}

/**
 * The mock server's script for a plan: each request gets its call's reply, and is counted in `tally`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const script = (
  calls: ReadonlyArray<PlannedCall>,
  tally: Ref.Ref<ServerTally>
): MockOpenAiServer.Script =>
(request) => {
  const index = indexOf(request.text)
  const reply = index === undefined ? undefined : calls[index]?.reply
  return Effect.as(
    Ref.update(tally, (current) => count(current, reply)),
    reply === undefined
      ? MockOpenAiServer.MockReply.HttpError({ status: 400 })
      : reply._tag === "HttpError"
      ? MockOpenAiServer.MockReply.HttpError({
        status: reply.status,
        ...(reply.status === 429 ? { headers: { "retry-after": "1" } } : {})
      })
      : MockOpenAiServer.MockReply.Text({
        text: reply.text,
        reasoning: reply.reasoning,
        toolCalls: reply.toolCalls,
        usage: reply.usage,
        delay: `${reply.delayMs} millis`,
        deltaDelay: "1 millis"
      })
  )
}
