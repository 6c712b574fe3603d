/**
 * The events of one instrumented call, built from its options and the call
 * context: its start event, and the terminal event derived from its `Exit`.
 */
import * as Cause from "effect/Cause"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type { CallContext } from "../CallContext.js"
import type {
  CallFailure,
  CallInfo,
  EndEvent,
  ErrorEvent,
  LlmResponse,
  Message,
  StartEvent,
  ToolEndEvent,
  ToolErrorEvent,
  ToolStartEvent
} from "../Events.js"
import { decodeMessagesLenient, decodeResponseLenient, plainMessages, plainResponse } from "./decode.js"
import { nextAttempt, type Operation } from "./operation.js"

/** What a call's events are made of: `instrument`'s options, less the response reader. */
export interface CallOptions {
  readonly provider: string
  readonly model: string
  /** `{ role, content }` messages; other shapes are decoded leniently (issues reported to handlers). */
  readonly messages?: ReadonlyArray<Message> | unknown
  readonly userId?: string | undefined
  /** The team the call is billed to; default: the call context's. */
  readonly teamId?: string | undefined
  /** The organisation the call is billed to; default: the call context's. */
  readonly orgId?: string | undefined
  readonly parentCallId?: string | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  readonly metadata?: Readonly<Record<string, unknown>> | undefined
  /** Request parameters (`temperature`, `maxTokens`, ...). */
  readonly params?: Readonly<Record<string, unknown>> | undefined
  /** A call id of the caller's choosing (e.g. to make a retried call idempotent); by default a new unique id. */
  readonly callId?: string | undefined
}

/** A call id for a call that no dispatcher numbers (see `Calls.nextCallId`). */
export const randomCallId = (): string => crypto.randomUUID()

const emptyTags: ReadonlyArray<string> = []
const emptyRecord: Readonly<Record<string, unknown>> = {}

/**
 * Describes a call's failure as data for handlers.
 */
export const failureFromCause = (cause: Cause.Cause<unknown>): CallFailure => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return { kind: "failure", errorType: errorType(error), message: errorMessage(error), error }
  }
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) {
    const error = defect.value
    return { kind: "defect", errorType: errorType(error), message: errorMessage(error), error }
  }
  return { kind: "interrupted", errorType: "Interrupted", message: "the call was interrupted", error: undefined }
}

const errorType = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    if ("_tag" in error && typeof error._tag === "string") return error._tag
    if (error instanceof Error) return error.name
    return error.constructor?.name ?? "object"
  }
  return typeof error
}

const errorMessage = (error: unknown): string => {
  if (typeof error === "object" && error !== null && "message" in error && typeof error.message === "string") {
    return error.message
  }
  try {
    return typeof error === "string" ? error : String(JSON.stringify(error))
  } catch {
    return String(error)
  }
}

/**
 * The start of one call: its info, decoded messages and start event, from
 * which {@link endEvent} and {@link errorEvent} build its terminal event.
 */
export interface CallEvents {
  readonly call: CallInfo
  readonly start: StartEvent
}

/**
 * Builds the call info and start event of one call from its options and the
 * current call context.
 */
export const makeCallEvents = (
  options: CallOptions,
  context: CallContext,
  startedAt: number,
  enclosingCallId: string | undefined,
  newCallId: () => string,
  operation: Operation | undefined
): CallEvents => {
  const userId = options.userId ?? context.userId
  const teamId = options.teamId ?? context.teamId
  const orgId = options.orgId ?? context.orgId
  const parentCallId = options.parentCallId ?? enclosingCallId ?? context.parentCallId
  const tags = options.tags === undefined
    ? context.tags ?? emptyTags
    : context.tags === undefined
    ? options.tags
    : [...context.tags, ...options.tags]
  const metadata = options.metadata === undefined
    ? context.metadata ?? emptyRecord
    : context.metadata === undefined
    ? options.metadata
    : { ...context.metadata, ...options.metadata }
  const call: { -readonly [K in keyof CallInfo]: CallInfo[K] } = {
    callId: options.callId ?? newCallId(),
    provider: options.provider,
    model: options.model,
    tags,
    metadata,
    startedAt
  }
  // Assigned, not spread: this runs once per call.
  if (parentCallId !== undefined) call.parentCallId = parentCallId
  if (userId !== undefined) call.userId = userId
  if (teamId !== undefined) call.teamId = teamId
  if (orgId !== undefined) call.orgId = orgId
  if (operation !== undefined) {
    const attempt = nextAttempt(operation, enclosingCallId)
    if (attempt !== undefined) {
      call.operationId = attempt.operationId
      call.attempt = attempt.attempt
    }
  }
  // Well-formed messages (the commonest) are taken as they are, with no decoding result made.
  const plain = plainMessages(options.messages)
  if (plain !== undefined) {
    return { call, start: { _tag: "Start", call, messages: plain, params: options.params ?? emptyRecord } }
  }
  const decoded = decodeMessagesLenient(options.messages)
  const start: StartEvent = decoded.issues === undefined
    ? { _tag: "Start", call, messages: decoded.messages, params: options.params ?? emptyRecord }
    : {
      _tag: "Start",
      call,
      messages: decoded.messages,
      params: options.params ?? emptyRecord,
      inputIssues: decoded.issues
    }
  return { call, start }
}

/**
 * The end event of a call that succeeded with `response` (decoded leniently:
 * what cannot be decoded is reported in `outputIssues`).
 */
export const endEvent = (
  events: CallEvents,
  response: unknown,
  durationMs: number,
  timeToFirstTokenMs?: number | undefined,
  issues?: ReadonlyArray<string> | undefined
): EndEvent => {
  const plain = issues === undefined && timeToFirstTokenMs === undefined ? plainResponse(response) : undefined
  // A well-formed response (the commonest) is taken as it is, with no decoding result made.
  if (plain !== undefined) return { _tag: "End", call: events.call, messages: events.start.messages, response: plain, durationMs }
  const out = issues === undefined ? decodeResponseLenient(response) : { response: { content: "" }, issues }
  return out.issues === undefined && timeToFirstTokenMs === undefined
    ? { _tag: "End", call: events.call, messages: events.start.messages, response: out.response, durationMs }
    : {
      _tag: "End",
      call: events.call,
      messages: events.start.messages,
      response: out.response,
      durationMs,
      ...(timeToFirstTokenMs !== undefined ? { timeToFirstTokenMs } : {}),
      ...(out.issues !== undefined ? { outputIssues: out.issues } : {})
    }
}

/**
 * The error event of a call that failed, died or was interrupted.
 */
export const errorEvent = (
  events: CallEvents,
  cause: Cause.Cause<unknown>,
  durationMs: number,
  timeToFirstTokenMs?: number | undefined,
  response?: LlmResponse | undefined
): ErrorEvent => ({
  _tag: "Error",
  call: events.call,
  messages: events.start.messages,
  failure: failureFromCause(cause),
  durationMs,
  interrupted: Cause.isInterruptedOnly(cause),
  ...(timeToFirstTokenMs !== undefined ? { timeToFirstTokenMs } : {}),
  ...(response !== undefined ? { response } : {})
})

/** What a tool run's events are made of. */
export interface ToolOptions {
  /** The tool's name. */
  readonly name: string
  /** Its parameters, as the model gave them. */
  readonly params?: unknown
  /** The id of the model's tool call (the provider's), when known. */
  readonly toolCallId?: string | undefined
  /** The LLM call that asked for the tool; default: the enclosing instrumented call, else the call context's. */
  readonly parentCallId?: string | undefined
  /** The provider and model of that call, when known; default `"unknown"`. */
  readonly provider?: string | undefined
  readonly model?: string | undefined
  readonly userId?: string | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  readonly metadata?: Readonly<Record<string, unknown>> | undefined
}

/** The start of one tool run: its info and start event. */
export interface ToolEvents {
  readonly call: CallInfo
  readonly start: ToolStartEvent
}

const executeTool = { "gen_ai.operation.name": "execute_tool" } as const

/** Builds the info and start event of one tool run (see `ToolStartEvent`). */
export const makeToolEvents = (
  options: ToolOptions,
  context: CallContext,
  startedAt: number,
  enclosingCallId: string | undefined,
  newCallId: () => string
): ToolEvents => {
  const parentCallId = options.parentCallId ?? enclosingCallId ?? context.parentCallId
  const userId = options.userId ?? context.userId
  const call: { -readonly [K in keyof CallInfo]: CallInfo[K] } = {
    callId: newCallId(),
    provider: options.provider ?? "unknown",
    model: options.model ?? "unknown",
    tags: options.tags === undefined
      ? context.tags ?? emptyTags
      : context.tags === undefined
      ? options.tags
      : [...context.tags, ...options.tags],
    metadata: { ...context.metadata, ...options.metadata, ...executeTool },
    startedAt
  }
  if (parentCallId !== undefined) call.parentCallId = parentCallId
  if (userId !== undefined) call.userId = userId
  if (context.teamId !== undefined) call.teamId = context.teamId
  if (context.orgId !== undefined) call.orgId = context.orgId
  const tool = options.toolCallId === undefined ? { name: options.name } : { name: options.name, id: options.toolCallId }
  return { call, start: { _tag: "ToolStart", call, tool, params: options.params } }
}

/** The terminal event of a tool run, from its `Exit`. */
export const toolTerminal = (
  events: ToolEvents,
  exit: Exit.Exit<unknown, unknown>,
  durationMs: number,
  failureOf?: ((result: any) => unknown) | undefined
): ToolEndEvent | ToolErrorEvent => {
  if (Exit.isSuccess(exit) && failureOf !== undefined) {
    // A tool that returns its failure to the model succeeds as an effect, and failed as a tool.
    const failure = failureOf(exit.value)
    if (failure !== undefined) exit = Exit.fail(failure)
  }
  return Exit.isSuccess(exit)
    ? { _tag: "ToolEnd", call: events.call, tool: events.start.tool, params: events.start.params, result: exit.value, durationMs }
    : {
      _tag: "ToolError",
      call: events.call,
      tool: events.start.tool,
      params: events.start.params,
      failure: failureFromCause(exit.cause),
      durationMs,
      interrupted: Cause.isInterruptedOnly(exit.cause)
    }
}
