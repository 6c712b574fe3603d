/**
 * A scripted mock of the OpenAI Responses API on a loopback port, for tests and the demo.
 *
 * It answers `POST {url}/responses` the way `@effect/ai-openai`'s `OpenAiLanguageModel` expects: a JSON
 * `Response` object, or, for `stream: true`, a `text/event-stream` of Responses events
 * (`response.created`, `response.in_progress`, `response.output_item.added`,
 * `response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
 * `response.content_part.done`, `response.output_item.done`, `response.completed`). What each request gets
 * (text and usage, an HTTP error, a connection dropped mid-response, a delay) is decided by a script.
 *
 * The server is written on `node:http` rather than `@effect/platform`'s `HttpServer` on purpose: it is a
 * stand-in for a remote provider, and fault injection (destroying the socket after n bytes of a body,
 * closing every connection at shutdown) needs the raw socket.
 *
 * Delays run on the `Clock` of the scope that started the server: real time under `it.live`, the
 * `TestClock` under `it.scoped` / `it.effect`.
 *
 * @since 0.1.0
 */
import * as OpenAiClient from "@effect/ai-openai/OpenAiClient"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Http from "node:http"

// =============================================================================
// Models
// =============================================================================

/**
 * Token usage the server reports, in the caller's terms. `outputTokens` includes `reasoningTokens`, as
 * OpenAI counts them; `total_tokens` on the wire is `inputTokens + outputTokens`.
 *
 * @since 0.1.0
 * @category models
 */
export interface MockUsage {
  readonly inputTokens: number
  readonly outputTokens: number
  readonly cachedTokens?: number | undefined
  readonly reasoningTokens?: number | undefined
}

/**
 * A function call the mock model makes: the tool's name, its arguments, and its call id (default
 * `call_mock_<request>_<n>`).
 *
 * @since 0.3.0
 * @category models
 */
export interface MockToolCall {
  readonly name: string
  readonly arguments: unknown
  readonly callId?: string | undefined
}

/**
 * What the server does with one request.
 *
 * - `Text`: a successful response with `text`; `usage` omitted means the response carries no `usage`
 *   (a provider that reports none). `delay` is waited before the response starts, `deltaDelay` between
 *   two streamed deltas. `reasoning` comes first, as a reasoning item with a summary (streamed as
 *   summary text deltas); `toolCalls` come after the message, as `function_call` items (their
 *   `arguments` JSON-encoded).
 * - `HttpError`: a non-2xx status with an OpenAI-style JSON error body (or the given `body`: a string is
 *   sent as `text/plain`, anything else as JSON).
 * - `DropMidStream`: when streaming, `afterDeltas` deltas of `text` (default: the default reply's text)
 *   are sent and then the socket is destroyed; when not streaming, the status line, headers and half of
 *   the JSON body are sent and then the socket is destroyed.
 *
 * @since 0.1.0
 * @category models
 */
export type MockReply = Data.TaggedEnum<{
  Text: {
    readonly text: string
    readonly reasoning?: string | undefined
    readonly toolCalls?: ReadonlyArray<MockToolCall> | undefined
    readonly usage?: MockUsage | undefined
    readonly delay?: Duration.DurationInput | undefined
    readonly deltaDelay?: Duration.DurationInput | undefined
  }
  HttpError: {
    readonly status: number
    readonly body?: unknown
    readonly headers?: Readonly<Record<string, string>> | undefined
  }
  DropMidStream: {
    readonly afterDeltas: number
    readonly text?: string | undefined
  }
}>

/**
 * Constructors and matchers for {@link MockReply}: `MockReply.Text({ text, usage })`,
 * `MockReply.HttpError({ status: 429 })`, `MockReply.DropMidStream({ afterDeltas: 2 })`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const MockReply = Data.taggedEnum<MockReply>()

/**
 * A request to `POST /v1/responses` as the script sees it.
 *
 * @since 0.1.0
 * @category models
 */
export interface MockRequest {
  /** Position of the request among all requests the server received, from 0. */
  readonly index: number
  readonly model: string
  /** The `input` field as sent (`string` or an array of input items). */
  readonly input: unknown
  readonly stream: boolean
  /** The text of every input message (system, user, assistant), joined by a newline. */
  readonly text: string
  /** The whole decoded request body. */
  readonly body: Readonly<Record<string, unknown>>
}

/**
 * Decides the reply to a request. It may be effectful, e.g. to wait on a `Deferred` a test controls.
 *
 * @since 0.1.0
 * @category models
 */
export type Script = (request: MockRequest) => MockReply | Effect.Effect<MockReply>

/**
 * A request as it reached the server, whatever its path.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedRequest {
  readonly index: number
  readonly method: string
  readonly path: string
  readonly headers: Readonly<Record<string, string>>
  /** The JSON body, or the raw text when it is not JSON. */
  readonly body: unknown
}

/**
 * What the server has received: a count of every request, and the most recent ones (bounded by
 * `maxRecorded`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Requests {
  readonly count: Effect.Effect<number>
  readonly recent: Effect.Effect<ReadonlyArray<RecordedRequest>>
  readonly last: Effect.Effect<Option.Option<RecordedRequest>>
}

/**
 * A running mock server. `url` ends in `/v1`, ready for `OpenAiClient.layer({ apiUrl: url })`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly url: string
  readonly port: number
  readonly requests: Requests
}

/**
 * The running mock server, for code that shares one across a suite or a demo.
 *
 * @since 0.1.0
 * @category tags
 */
export class MockOpenAiServer extends Context.Tag("effect-llm-callbacks/test/MockOpenAiServer")<
  MockOpenAiServer,
  Service
>() {}

/**
 * Options of {@link make} and {@link layer}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default: {@link defaultScript}. */
  readonly script?: Script | undefined
  /** How many recent requests are kept for inspection. Default: 100. */
  readonly maxRecorded?: number | undefined
  /** Bound on closing the server and its connections. Default: 5 seconds. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
}

// =============================================================================
// Scripts
// =============================================================================

/**
 * Counts whitespace-separated words: the default script's token count, so tests can predict usage.
 *
 * @since 0.1.0
 * @category utils
 */
export const countWords = (text: string): number => text.split(/\s+/).filter((word) => word.length > 0).length

/**
 * Splits a text into the deltas a stream sends: one word with its surrounding whitespace each. The
 * deltas concatenate to the text.
 *
 * @since 0.1.0
 * @category utils
 */
export const splitDeltas = (text: string): ReadonlyArray<string> => text.match(/\s*\S+\s*|\s+/g) ?? []

/**
 * The reply the default script gives: `Echo: <request text>`, with `inputTokens` the number of words of
 * the request text and `outputTokens` the number of words of the reply.
 *
 * @since 0.1.0
 * @category scripts
 */
export const echoReply = (request: MockRequest): MockReply => {
  const text = `Echo: ${request.text}`
  return MockReply.Text({
    text,
    usage: { inputTokens: countWords(request.text), outputTokens: countWords(text) }
  })
}

/**
 * The default script: every request gets {@link echoReply}.
 *
 * @since 0.1.0
 * @category scripts
 */
export const defaultScript: Script = echoReply

/**
 * A script that answers the n-th request with `replies[n]`, and any later one with `orElse`.
 *
 * @since 0.1.0
 * @category scripts
 */
export const sequence = (replies: ReadonlyArray<MockReply>, orElse: Script = defaultScript): Script => (request) =>
  replies[request.index] ?? orElse(request)

/**
 * A script that dispatches on the requested model, falling back to `orElse` for other models.
 *
 * @example
 * ```ts
 * const script = MockOpenAiServer.byModel({
 *   "gpt-4o-mini": MockOpenAiServer.defaultScript,
 *   "gpt-4o": (request) => MockReply.Text({ text: "slow", delay: "200 millis" }),
 *   "o3-mini": () => MockReply.HttpError({ status: 429 })
 * })
 * ```
 *
 * @since 0.1.0
 * @category scripts
 */
export const byModel = (
  scripts: Readonly<Record<string, Script>>,
  orElse: Script = defaultScript
): Script =>
(request) => (Object.hasOwn(scripts, request.model) ? scripts[request.model]! : orElse)(request)

// =============================================================================
// Wire format
// =============================================================================

const RequestBody = Schema.Struct({
  model: Schema.String,
  input: Schema.Unknown,
  stream: Schema.optional(Schema.NullOr(Schema.Boolean))
})

const decodeRequestBody = Schema.decodeUnknownOption(RequestBody)

const textOfContent = (content: unknown): ReadonlyArray<string> => {
  if (typeof content === "string") return [content]
  if (!Array.isArray(content)) return []
  return content.flatMap((part: unknown) =>
    typeof part === "object" && part !== null && "text" in part && typeof part.text === "string" ? [part.text] : []
  )
}

const textOfInput = (input: unknown): string => {
  if (typeof input === "string") return input
  if (!Array.isArray(input)) return ""
  return input.flatMap((item: unknown) =>
    typeof item === "object" && item !== null && "content" in item ? textOfContent(item.content) : []
  ).join("\n")
}

const wireUsage = (usage: MockUsage) => ({
  input_tokens: usage.inputTokens,
  input_tokens_details: { cached_tokens: usage.cachedTokens ?? 0 },
  output_tokens: usage.outputTokens,
  output_tokens_details: { reasoning_tokens: usage.reasoningTokens ?? 0 },
  total_tokens: usage.inputTokens + usage.outputTokens
})

const outputText = (text: string) => ({ type: "output_text", text, annotations: [], logprobs: [] })

const messageItem = (id: string, status: "in_progress" | "completed", content: ReadonlyArray<unknown>) => ({
  id,
  type: "message",
  role: "assistant",
  status,
  content
})

const reasoningItem = (id: string, text: string | undefined) => ({
  id,
  type: "reasoning",
  summary: text === undefined ? [] : [{ type: "summary_text", text }]
})

const functionCallItems = (index: number, toolCalls: ReadonlyArray<MockToolCall> | undefined) =>
  (toolCalls ?? []).map((call, n) => ({
    id: `fc_mock_${index}_${n}`,
    type: "function_call",
    call_id: call.callId ?? `call_mock_${index}_${n}`,
    name: call.name,
    arguments: JSON.stringify(call.arguments),
    status: "completed"
  }))

const responseObject = (options: {
  readonly id: string
  readonly model: string
  readonly createdAt: number
  readonly status: "in_progress" | "completed"
  readonly output: ReadonlyArray<unknown>
  readonly usage: MockUsage | undefined
}) => ({
  id: options.id,
  object: "response",
  created_at: options.createdAt,
  status: options.status,
  error: null,
  incomplete_details: null,
  instructions: null,
  max_output_tokens: null,
  model: options.model,
  output: options.output,
  parallel_tool_calls: true,
  previous_response_id: null,
  reasoning: { effort: null, summary: null },
  store: true,
  temperature: 1,
  text: { format: { type: "text" } },
  tool_choice: "auto",
  tools: [],
  top_p: 1,
  truncation: "disabled",
  metadata: {},
  ...(options.usage === undefined ? {} : { usage: wireUsage(options.usage) })
})

const errorBody = (status: number, message: string) => ({
  error: {
    message,
    type: status === 429 ? "requests" : status >= 500 ? "server_error" : "invalid_request_error",
    param: null,
    code: status === 429 ? "rate_limit_exceeded" : null
  }
})

// =============================================================================
// Node plumbing
// =============================================================================

const maxBodyBytes = 16 * 1024 * 1024

class BodyError extends Data.TaggedError("BodyError")<{ readonly cause: unknown }> {}

const readBody = (request: Http.IncomingMessage): Effect.Effect<string, BodyError> =>
  Effect.async<string, BodyError>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    request.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > maxBodyBytes) {
        request.destroy()
        resume(Effect.fail(new BodyError({ cause: `body larger than ${maxBodyBytes} bytes` })))
      } else {
        chunks.push(chunk)
      }
    })
    request.on("end", () => resume(Effect.succeed(Buffer.concat(chunks).toString("utf8"))))
    request.on("error", (cause) => resume(Effect.fail(new BodyError({ cause }))))
  })

const write = (response: Http.ServerResponse, chunk: string): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    response.write(chunk, () => resume(Effect.void))
  })

const end = (response: Http.ServerResponse, chunk?: string): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    response.end(chunk ?? "", () => resume(Effect.void))
  })

const sendJson = (
  response: Http.ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {}
): Effect.Effect<void> =>
  Effect.suspend(() => {
    const text = typeof body === "string" ? body : JSON.stringify(body)
    response.writeHead(status, {
      ...headers,
      "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
      "content-length": Buffer.byteLength(text)
    })
    return end(response, text)
  })

const destroy = (response: Http.ServerResponse): Effect.Effect<void> => Effect.sync(() => response.destroy())

const sse = (event: { readonly type: string }): string => `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`

const normalizeHeaders = (headers: Http.IncomingHttpHeaders): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : value
  }
  return out
}

const parseJson = (text: string): Option.Option<unknown> => {
  try {
    return Option.some(JSON.parse(text))
  } catch {
    return Option.none()
  }
}

// =============================================================================
// Replies
// =============================================================================

const replyJson = (
  response: Http.ServerResponse,
  request: MockRequest,
  reply: MockReply,
  createdAt: number
): Effect.Effect<void> =>
  MockReply.$match(reply, {
    Text: ({ delay, reasoning, text, toolCalls, usage }) =>
      Effect.zipRight(
        delay === undefined ? Effect.void : Effect.sleep(delay),
        sendJson(
          response,
          200,
          responseObject({
            id: `resp_mock_${request.index}`,
            model: request.model,
            createdAt,
            status: "completed",
            output: [
              ...(reasoning === undefined ? [] : [reasoningItem(`rs_mock_${request.index}`, reasoning)]),
              messageItem(`msg_mock_${request.index}`, "completed", [outputText(text)]),
              ...functionCallItems(request.index, toolCalls)
            ],
            usage
          })
        )
      ),
    HttpError: ({ body, headers, status }) =>
      sendJson(response, status, body ?? errorBody(status, `Mock OpenAI error (HTTP ${status})`), headers),
    DropMidStream: ({ text }) =>
      Effect.suspend(() => {
        const body = JSON.stringify(responseObject({
          id: `resp_mock_${request.index}`,
          model: request.model,
          createdAt,
          status: "completed",
          output: [messageItem(`msg_mock_${request.index}`, "completed", [outputText(text ?? "")])],
          usage: undefined
        }))
        response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
        return write(response, body.slice(0, Math.floor(body.length / 2)))
      }).pipe(Effect.zipRight(destroy(response)))
  })

const replyStream = (
  response: Http.ServerResponse,
  request: MockRequest,
  reply: MockReply,
  createdAt: number
): Effect.Effect<void> => {
  if (reply._tag === "HttpError") {
    return replyJson(response, request, reply, createdAt)
  }
  const text = reply._tag === "Text" ? reply.text : reply.text ?? defaultText(request)
  const usage = reply._tag === "Text" ? reply.usage : undefined
  const deltas = splitDeltas(text)
  const sent = reply._tag === "Text" ? deltas : deltas.slice(0, Math.max(0, reply.afterDeltas))
  const deltaDelay = reply._tag === "Text" ? reply.deltaDelay : undefined
  const responseId = `resp_mock_${request.index}`
  const itemId = `msg_mock_${request.index}`
  const reasoning = reply._tag === "Text" ? reply.reasoning : undefined
  const reasoningId = `rs_mock_${request.index}`
  // The reasoning item comes first, then the message, then the function calls.
  const messageIndex = reasoning === undefined ? 0 : 1
  let sequenceNumber = 0
  const event = <A extends { readonly type: string }>(fields: A) =>
    sse({ ...fields, sequence_number: sequenceNumber++ })
  const response_ = (status: "in_progress" | "completed", output: ReadonlyArray<unknown>, usage?: MockUsage) =>
    responseObject({ id: responseId, model: request.model, createdAt, status, output, usage })
  const position = { item_id: itemId, output_index: messageIndex, content_index: 0 }
  const summaryPosition = { item_id: reasoningId, output_index: 0, summary_index: 0 }
  const reasoningEvents = reasoning === undefined ? Effect.void : Effect.zipRight(
    write(
      response,
      event({ type: "response.output_item.added", output_index: 0, item: reasoningItem(reasoningId, undefined) }) +
        event({ type: "response.reasoning_summary_part.added", ...summaryPosition, part: { type: "summary_text", text: "" } })
    ),
    Effect.zipRight(
      Effect.forEach(splitDeltas(reasoning), (delta, index) =>
        Effect.zipRight(
          index > 0 && deltaDelay !== undefined ? Effect.sleep(deltaDelay) : Effect.void,
          write(response, event({ type: "response.reasoning_summary_text.delta", ...summaryPosition, delta }))
        ), { discard: true }),
      write(
        response,
        event({ type: "response.reasoning_summary_text.done", ...summaryPosition, text: reasoning }) +
          event({ type: "response.reasoning_summary_part.done", ...summaryPosition, part: { type: "summary_text", text: reasoning } }) +
          event({ type: "response.output_item.done", output_index: 0, item: reasoningItem(reasoningId, reasoning) })
      )
    )
  )
  const calls = reply._tag === "Text" ? functionCallItems(request.index, reply.toolCalls) : []
  const callEvents = calls.map((item, n) => {
    const output_index = messageIndex + 1 + n
    return event({ type: "response.output_item.added", output_index, item: { ...item, arguments: "", status: "in_progress" } }) +
      event({ type: "response.function_call_arguments.delta", output_index, item_id: item.id, delta: item.arguments }) +
      event({ type: "response.function_call_arguments.done", output_index, item_id: item.id, arguments: item.arguments }) +
      event({ type: "response.output_item.done", output_index, item })
  }).join("")

  const head = Effect.suspend(() => {
    response.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive"
    })
    return write(
      response,
      event({ type: "response.created", response: response_("in_progress", []) }) +
        event({ type: "response.in_progress", response: response_("in_progress", []) })
    )
  }).pipe(
    Effect.zipRight(reasoningEvents),
    Effect.zipRight(Effect.suspend(() =>
      write(
        response,
        event({
          type: "response.output_item.added",
          output_index: messageIndex,
          item: messageItem(itemId, "in_progress", [])
        }) +
          event({ type: "response.content_part.added", ...position, part: outputText("") })
      )
    ))
  )
  const body = Effect.forEach(sent, (delta, index) =>
    Effect.zipRight(
      index > 0 && deltaDelay !== undefined ? Effect.sleep(deltaDelay) : Effect.void,
      write(response, event({ type: "response.output_text.delta", ...position, delta, logprobs: [] }))
    ), { discard: true })
  const tail = Effect.suspend(() => {
    const item = messageItem(itemId, "completed", [outputText(text)])
    const output = [...(reasoning === undefined ? [] : [reasoningItem(reasoningId, reasoning)]), item, ...calls]
    return end(
      response,
      event({ type: "response.output_text.done", ...position, text, logprobs: [] }) +
        event({ type: "response.content_part.done", ...position, part: outputText(text) }) +
        event({ type: "response.output_item.done", output_index: messageIndex, item }) +
        callEvents +
        event({ type: "response.completed", response: response_("completed", output, usage) })
    )
  })

  return Effect.all([
    reply._tag === "Text" && reply.delay !== undefined ? Effect.sleep(reply.delay) : Effect.void,
    head,
    body,
    reply._tag === "Text" ? tail : destroy(response)
  ], { discard: true })
}

const defaultText = (request: MockRequest): string => {
  const reply = echoReply(request)
  return reply._tag === "Text" ? reply.text : ""
}

// =============================================================================
// Constructors
// =============================================================================

/**
 * Starts a mock server on `127.0.0.1` and a free port for the lifetime of the scope. Closing the scope
 * interrupts in-flight replies, destroys every connection and closes the server, bounded by
 * `shutdownTimeout`.
 *
 * @example
 * ```ts
 * const server = yield* MockOpenAiServer.make({
 *   script: MockOpenAiServer.sequence([MockReply.HttpError({ status: 429 })])
 * })
 * // OpenAiClient.layer({ apiUrl: server.url, apiKey: Redacted.make("test") })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const script = options.script ?? defaultScript
    const maxRecorded = Math.max(0, options.maxRecorded ?? 100)
    const shutdownTimeout = options.shutdownTimeout ?? Duration.seconds(5)
    const log = yield* Ref.make<{ readonly count: number; readonly recent: ReadonlyArray<RecordedRequest> }>({
      count: 0,
      recent: []
    })
    const runFork = yield* FiberSet.makeRuntime<never, void, never>()

    const record = (entry: Omit<RecordedRequest, "index">) =>
      Ref.modify(log, ({ count, recent }) => {
        const recorded = { index: count, ...entry }
        const next = maxRecorded === 0 ? [] : [...recent, recorded].slice(-maxRecorded)
        return [count, { count: count + 1, recent: next }] as const
      })

    const handle = (request: Http.IncomingMessage, response: Http.ServerResponse): Effect.Effect<void> =>
      Effect.gen(function*() {
        const raw = yield* readBody(request)
        const json = parseJson(raw)
        const path = new URL(request.url ?? "/", "http://127.0.0.1").pathname
        const index = yield* record({
          method: request.method ?? "GET",
          path,
          headers: normalizeHeaders(request.headers),
          body: Option.getOrElse(json, () => raw)
        })
        if (request.method !== "POST" || path !== "/v1/responses") {
          return yield* sendJson(response, 404, errorBody(404, `Unknown route ${request.method} ${path}`))
        }
        const body = Option.flatMap(
          json,
          (raw) => Option.map(decodeRequestBody(raw), (fields) => ({ ...fields, raw: raw as Record<string, unknown> }))
        )
        if (Option.isNone(body)) {
          return yield* sendJson(response, 400, errorBody(400, "Expected a JSON body with `model` and `input`"))
        }
        const mockRequest: MockRequest = {
          index,
          model: body.value.model,
          input: body.value.input,
          stream: body.value.stream === true,
          text: textOfInput(body.value.input),
          body: body.value.raw
        }
        const scripted = script(mockRequest)
        const reply = Effect.isEffect(scripted) ? yield* scripted : scripted
        const createdAt = Math.floor((yield* Clock.currentTimeMillis) / 1000)
        return yield* (mockRequest.stream ? replyStream : replyJson)(response, mockRequest, reply, createdAt)
      }).pipe(
        Effect.catchAllCause((cause) =>
          response.headersSent
            ? destroy(response)
            : sendJson(response, 500, errorBody(500, `Mock script failed: ${String(cause)}`))
        ),
        Effect.onInterrupt(() => destroy(response))
      )

    const server = yield* Effect.acquireRelease(
      Effect.async<Http.Server>((resume) => {
        const server = Http.createServer((request, response) => {
          const fiber = runFork(handle(request, response))
          response.on("close", () => {
            if (!response.writableEnded) fiber.unsafeInterruptAsFork(FiberId.none)
          })
        })
        server.once("error", (error) => resume(Effect.die(error)))
        server.listen({ host: "127.0.0.1", port: 0 }, () => resume(Effect.succeed(server)))
      }),
      (server) =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        }).pipe(Effect.interruptible, Effect.timeoutOption(shutdownTimeout))
    )

    const address = server.address()
    if (address === null || typeof address === "string") {
      return yield* Effect.dieMessage(`MockOpenAiServer: unexpected server address ${String(address)}`)
    }
    const recent = Effect.map(Ref.get(log), (state) => state.recent)
    return MockOpenAiServer.of({
      url: `http://127.0.0.1:${address.port}/v1`,
      port: address.port,
      requests: {
        count: Effect.map(Ref.get(log), (state) => state.count),
        recent,
        last: Effect.map(recent, (requests) => Option.fromNullable(requests[requests.length - 1]))
      }
    })
  })

/**
 * A layer running a mock server for its lifetime.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<MockOpenAiServer> =>
  Layer.scoped(MockOpenAiServer, make(options))

/**
 * An `OpenAiClient` pointed at the mock server (API key `"test"`, undici HTTP client), for
 * `OpenAiLanguageModel.model(...)` or `OpenAiLanguageModel.layer(...)`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerOpenAiClient: Layer.Layer<OpenAiClient.OpenAiClient, never, MockOpenAiServer> = Layer.unwrapEffect(
  Effect.map(MockOpenAiServer, (server) => OpenAiClient.layer({ apiUrl: server.url, apiKey: Redacted.make("test") }))
).pipe(Layer.provide(NodeHttpClient.layerUndici))
