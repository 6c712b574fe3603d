/**
 * An app as our users write one: an HTTP endpoint (`@effect/platform-node`) that streams an
 * instrumented, budget-guarded `streamText` (`@effect/ai-openai` against the mock OpenAI server) to its
 * client, the stream built in the request's handler and run by the server after the handler returned.
 * Real sockets on loopback, real time.
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import * as Http from "node:http"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Budget, Callbacks, Dispatcher, type Events, Testing, TokenStore } from "../../src/index.js"
import * as MockOpenAiServer from "../support/MockOpenAiServer.js"

const { MockReply } = MockOpenAiServer

const cycle = "2026-12-01"
const story = Array.from({ length: 40 }, (_, i) => `word${i}`).join(" ")
const encoder = new TextEncoder()

/** GET /chat?user=...: the model's text, streamed as it comes, under the user's budget. */
const chat = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const userId = new URL(request.url, "http://app").searchParams.get("user") ?? "anonymous"
  const services = yield* Effect.context<LanguageModel.LanguageModel | TokenStore.TokenStore>()
  const body = LanguageModel.streamText({ prompt: "Tell me a story" }).pipe(
    Stream.filter((part) => part.type === "text-delta"),
    Stream.map((part) => encoder.encode(part.delta)),
    // Run by the server once this handler has returned: the stream carries who pays and the guard.
    Callbacks.withCallContext({ userId }),
    Budget.guardStream({ cycleStartDate: cycle, maxOutputTokens: { "gpt-4o-mini": 100 } }),
    // The status line is sent before the stream runs: a refusal is told in the body, as SSE APIs do.
    Stream.catchTags({
      UsageLimitExceeded: (refused) => Stream.make(encoder.encode(`[over budget: ${refused.heldTokens} held of ${refused.limit}]`)),
      RateLimitExceeded: (refused) => Stream.make(encoder.encode(`[rate limited: retry in ${refused.retryAfterMillis} ms]`))
    }),
    Stream.provideContext(services)
  )
  return HttpServerResponse.stream(body, { contentType: "text/plain" })
})

const app = HttpRouter.empty.pipe(HttpRouter.get("/chat", chat))

/** The app on a free loopback port, over the instrumented model, token usage, a recorder and a store. */
const environment = (server: MockOpenAiServer.Service) =>
  HttpServer.serve(app).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => Http.createServer(), { host: "127.0.0.1", port: 0 })),
    Layer.provideMerge(Layer.mergeAll(
      OpenAiLanguageModel.model("gpt-4o-mini").pipe(
        AiLanguageModel.withCallbacks({ model: "gpt-4o-mini" }),
        Layer.provide(MockOpenAiServer.layerOpenAiClient),
        Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server))
      ),
      TokenUsage.layer({ cycleStartDate: cycle }),
      TokenUsage.layerTokenCounter,
      Testing.layerRecorder()
    )),
    Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory))
  )

const urlOf = (address: HttpServer.Address, user: string) =>
  address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}/chat?user=${user}` : ""

/** Reads the whole body, or, with `stopAfter`, that many chunks and then goes away (aborts). */
const client = (url: string, stopAfter?: number) =>
  Effect.promise(async () => {
    const controller = new AbortController()
    try {
      const response = await fetch(url, { signal: controller.signal })
      const reader = response.body!.getReader()
      const decoder = new TextDecoder()
      let text = ""
      let chunks = 0
      for (;;) {
        const { done, value } = await reader.read()
        if (done) return { status: response.status, text, complete: true }
        text += decoder.decode(value)
        if (stopAfter !== undefined && ++chunks >= stopAfter) {
          controller.abort()
          return { status: response.status, text, complete: false }
        }
      }
    } catch {
      return { status: 0, text: "", complete: false }
    }
  })

/** Waits (real time) until `done` holds. */
const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, done: (a: A) => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 500; i++) {
      const value = yield* check
      if (done(value)) return value
      yield* Effect.sleep("10 millis")
    }
    return yield* Effect.dieMessage("timed out waiting")
  })

const terminals = Effect.map(
  Testing.events,
  (events) => events.filter((event): event is Events.EndEvent | Events.ErrorEvent => event._tag === "End" || event._tag === "Error")
)

describe("an app streaming streamText to its HTTP clients", () => {
  it.scopedLive("a client that reads it all, one that goes away midway, two at once over one user's room for one", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () => MockReply.Text({ text: story, deltaDelay: "5 millis", usage: { inputTokens: 12, outputTokens: 40 } })
      })
      const context = yield* Layer.build(environment(server))
      const address = Context.get(context, HttpServer.HttpServer).address
      const run = <A, E>(effect: Effect.Effect<A, E, Testing.Recorder | TokenStore.TokenStore>) =>
        Effect.provide(effect, context)
      const stats = (userId: string) => run(Effect.flatMap(TokenStore.TokenStore, (store) => store.stats(userId, cycle)))

      // Read to the end: the whole story, billed as reported, the hold settled.
      const whole = yield* client(urlOf(address, "alice"))
      assert.deepStrictEqual([whole.status, whole.complete, whole.text], [200, true, story])
      const ended = yield* run(eventually(terminals, (events) => events.length === 1))
      assert.strictEqual(ended[0]!._tag, "End")
      assert.deepInclude(yield* stats("alice"), { totalTokens: 52, heldTokens: 0 })

      // Gone after the first chunk: the stream is interrupted on the server, heard as an interrupted
      // error carrying what was consumed (estimated), recorded, and the hold ended.
      const gone = yield* client(urlOf(address, "bob"), 1)
      assert.isFalse(gone.complete)
      const cut = (yield* run(eventually(terminals, (events) => events.length === 2)))[1]!
      assert.strictEqual(cut._tag, "Error")
      const error = cut as Events.ErrorEvent
      assert.isTrue(error.interrupted)
      assert.strictEqual(error.call.userId, "bob")
      const usage = error.response!.usage!
      assert.isTrue(usage.estimated === true && usage.completionTokens < 40 && usage.totalTokens > 0, JSON.stringify(usage))
      const bob = yield* run(eventually(stats("bob"), (s) => s.totalTokens > 0))
      assert.deepInclude(bob, { totalTokens: usage.totalTokens, heldTokens: 0 })

      // Carol's limit leaves room for one stream's worst case (prompt + 100): of two at once, one is refused
      // before the model is called.
      const store = yield* run(TokenStore.TokenStore)
      yield* store.setLimit("carol", cycle, 150)
      const requestsBefore = yield* server.requests.count
      const both = yield* Effect.all([client(urlOf(address, "carol")), client(urlOf(address, "carol"))], { concurrency: 2 })
      // (122 held while the other streams; 0 held, 52 used, should it have ended first on a slow machine.)
      assert.deepStrictEqual(both.map((reply) => reply.text === story ? "story" : reply.text.replace(/\d+ held/, "n held")).sort(), [
        "[over budget: n held of 150]",
        "story"
      ])
      assert.strictEqual((yield* server.requests.count) - requestsBefore, 1)
      assert.deepInclude(yield* run(eventually(stats("carol"), (s) => s.heldTokens === 0)), { totalTokens: 52 })
    }))
})
