/**
 * The span of an instrumented call or tool run, as the GenAI semantic
 * conventions name its attributes: opened synchronously when a real tracer
 * is installed (none otherwise), ended with the call's outcome.
 */
import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import type {
  CallInfo,
  EndEvent,
  ErrorEvent,
  LlmResponse,
  ToolEndEvent,
  ToolErrorEvent
} from "../Events.js"
import * as SemanticConventions from "../SemanticConventions.js"
import { failureFromCause } from "./callEvents.js"

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

/** See `Callbacks.operationName`. */
export const operationName = (call: CallInfo): string => {
  const operation = call.metadata["gen_ai.operation.name"]
  return typeof operation === "string" && operation !== "" ? operation : "chat"
}

const bigint0 = BigInt(0)

/** Effect's default tracer, which exports nowhere: no span is opened under it (nor a handler invocation's). */
export const nativeTracer: Tracer.Tracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

const spanSymbol = Symbol.for("effect/SpanAnnotation")

const capturedBy = (error: unknown, span: Tracer.Span): boolean =>
  typeof error === "object" && error !== null && spanSymbol in error &&
  (error as { readonly [spanSymbol]: unknown })[spanSymbol] === span

/**
 * Effect wraps an error failed inside a span in a proxy that remembers the
 * span. The call's span is ours, not the caller's: unwrap what it captured so
 * that the call fails with exactly the error the bare call fails with.
 */
export const uncapture = <E>(cause: Cause.Cause<E>, span: Tracer.Span): Cause.Cause<E> => {
  switch (cause._tag) {
    case "Fail":
      return capturedBy(cause.error, span) ? Cause.fail(Cause.originalError(cause.error)) : cause
    case "Die":
      return capturedBy(cause.defect, span) ? Cause.die(Cause.originalError(cause.defect)) : cause
    case "Sequential":
    case "Parallel": {
      const left = uncapture(cause.left, span)
      const right = uncapture(cause.right, span)
      if (left === cause.left && right === cause.right) return cause
      return cause._tag === "Sequential" ? Cause.sequential(left, right) : Cause.parallel(left, right)
    }
    default:
      return cause
  }
}

const parentOf = (span: Tracer.AnySpan | undefined): Option.Option<Tracer.AnySpan> => {
  // Skip spans that opted out of propagation, as `Effect.withSpan` does.
  while (span !== undefined && Context.get(span.context, Tracer.DisablePropagation)) {
    span = span._tag === "Span" ? Option.getOrUndefined(span.parent) : undefined
  }
  return span === undefined ? Option.none() : Option.some(span)
}

/** A real tracer is installed and enabled (Effect's default one exports nowhere). */
export const tracing = (fiber: AnyFiber): boolean =>
  fiber.currentTracer !== nativeTracer && fiber.getFiberRef(FiberRef.currentTracerEnabled)

/**
 * Opens the span of one call or tool run, the way `Effect.withSpan` would
 * (parent, annotations and links from the fiber, the fiber's tracer and
 * clock), but synchronously and without capturing a stack trace.
 * `undefined` when tracing is disabled.
 */
export const startSpan = (
  fiber: AnyFiber,
  call: CallInfo,
  clock: Clock.Clock,
  tool?: StartTool,
  params?: Readonly<Record<string, unknown>>
): Tracer.Span | undefined => {
  // Effect's default tracer exports nowhere: no span, so the hot path pays
  // nothing unless a real tracer (e.g. OpenTelemetry) is installed.
  if (!tracing(fiber)) return undefined
  const operation = operationName(call)
  const links = fiber.getFiberRef(FiberRef.currentTracerSpanLinks)
  const span = fiber.currentTracer.span(
    tool === undefined ? `${operation} ${call.model}` : `${operation} ${tool.name}`,
    parentOf(fiber.currentSpan),
    Context.empty(),
    links.length === 0 ? [] : Array.from(links),
    fiber.getFiberRef(FiberRef.currentTracerTimingEnabled) ? clock.unsafeCurrentTimeNanos() : bigint0,
    tool === undefined ? "client" : "internal"
  )
  const annotations = fiber.getFiberRef(FiberRef.currentTracerSpanAnnotations)
  if (HashMap.size(annotations) > 0) HashMap.forEach(annotations, (value, key) => span.attribute(key, value))
  span.attribute("gen_ai.operation.name", operation)
  span.attribute("llm.call_id", call.callId)
  if (tool === undefined) {
    for (const name of conventionsOf(fiber).provider) span.attribute(name, call.provider)
    span.attribute("gen_ai.request.model", call.model)
    if (params !== undefined) for (const [name, value] of SemanticConventions.requestAttributes(params)) span.attribute(name, value)
    const address = call.metadata["server.address"]
    const port = call.metadata["server.port"]
    if (typeof address === "string") span.attribute("server.address", address)
    if (typeof port === "number") span.attribute("server.port", port)
  } else {
    span.attribute("gen_ai.tool.name", tool.name)
    if (tool.id !== undefined) span.attribute("gen_ai.tool.call.id", tool.id)
  }
  if (call.operationId !== undefined) span.attribute("llm.operation_id", call.operationId)
  if (call.attempt !== undefined) span.attribute("llm.attempt", call.attempt)
  return span
}

type StartTool = { readonly name: string; readonly id?: string | undefined }

export type Conventions = ReturnType<typeof SemanticConventions.names>

export const conventionsOf = (fiber: AnyFiber): Conventions =>
  SemanticConventions.names(Context.get(fiber.currentContext, SemanticConventions.CurrentVersion))

/** Records the outcome of the call on its span and ends it (its status comes from `exit`). */
export const endSpan = (
  timing: boolean,
  span: Tracer.Span,
  event: EndEvent | ErrorEvent | ToolEndEvent | ToolErrorEvent,
  exit: Exit.Exit<unknown, unknown>,
  clock: Clock.Clock,
  conventions: Conventions
): void => {
  if (event._tag === "ToolEnd") {
    // Nothing to add: the status is the exit's.
  } else if (event._tag === "ToolError") {
    span.attribute("error.type", SemanticConventions.errorType(event.failure.error, event.failure.errorType))
  } else {
    if (event._tag === "Error") {
      span.attribute("error.type", SemanticConventions.errorType(event.failure.error, event.failure.errorType))
    }
    // A success's response, or what a cut-off call consumed.
    const response = event.response
    if (response !== undefined) responseAttributes(span, response, conventions)
    if (event.timeToFirstTokenMs !== undefined) {
      span.attribute("gen_ai.response.time_to_first_chunk", event.timeToFirstTokenMs / 1000)
    }
  }
  span.end(timing ? clock.unsafeCurrentTimeNanos() : bigint0, exit)
}

/**
 * A string-array attribute. Effect's OpenTelemetry bridge turns an array
 * into its JSON text; the conventions want an array, so the OpenTelemetry
 * span under the bridge's (its `span` field, when there is one) gets it as
 * such.
 */
const stringArray = (span: Tracer.Span, key: string, values: ReadonlyArray<string>): void => {
  span.attribute(key, values)
  const otel = (span as { readonly span?: { readonly setAttribute?: unknown } }).span
  if (typeof otel?.setAttribute === "function") (otel.setAttribute as (k: string, v: ReadonlyArray<string>) => void).call(otel, key, values)
}

const responseAttributes = (span: Tracer.Span, response: LlmResponse, conventions: Conventions): void => {
  const usage = response.usage
  if (usage !== undefined) {
    for (const name of conventions.inputTokens) span.attribute(name, usage.promptTokens)
    for (const name of conventions.outputTokens) span.attribute(name, usage.completionTokens)
    if (usage.cachedTokens !== undefined) span.attribute("gen_ai.usage.cache_read.input_tokens", usage.cachedTokens)
    if (usage.cacheWriteTokens !== undefined) {
      span.attribute("gen_ai.usage.cache_creation.input_tokens", usage.cacheWriteTokens)
    }
    if (usage.reasoningTokens !== undefined) span.attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoningTokens)
    if (usage.estimated === true) span.attribute("llm.usage.estimated", true)
  }
  if (response.model !== undefined) span.attribute("gen_ai.response.model", response.model)
  if (response.id !== undefined) span.attribute("gen_ai.response.id", response.id)
  if (response.finishReason !== undefined) stringArray(span, "gen_ai.response.finish_reasons", [response.finishReason])
  if (response.costEstimate !== undefined) span.attribute("llm.cost_estimate", response.costEstimate)
}

/** Ends the span of a call the gate refused, with the refusal (`cause`) as its error, as an error event's span ends. */
export const endRefusedSpan = (fiber: AnyFiber, span: Tracer.Span, clock: Clock.Clock, cause: Cause.Cause<unknown>): void => {
  const failure = failureFromCause(cause)
  span.attribute("error.type", SemanticConventions.errorType(failure.error, failure.errorType))
  span.end(fiber.getFiberRef(FiberRef.currentTracerTimingEnabled) ? clock.unsafeCurrentTimeNanos() : bigint0, Exit.failCause(cause))
}
