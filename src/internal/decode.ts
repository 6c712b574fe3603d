/**
 * Lenient decoding of what callers give `instrument`: messages and
 * responses of any shape become events, and what cannot be decoded is
 * reported as issues, never as a failure of the call.
 */
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { isPythonResponse, LlmResponse, Message, PythonResponse } from "../Events.js"

const isPlainMessage = (u: unknown): u is Message =>
  typeof u === "object" && u !== null && typeof (u as any).role === "string" &&
  typeof (u as any).content === "string"

const decodeMessages = Schema.decodeUnknownEither(Schema.Array(Message), { errors: "all" })

/** `input` when it is a list of well-formed text messages (nothing to decode), else `undefined`. */
export const plainMessages = (input: unknown): ReadonlyArray<Message> | undefined => {
  if (!Array.isArray(input)) return undefined
  for (let i = 0; i < input.length; i++) {
    if (!isPlainMessage(input[i])) return undefined
  }
  return input as ReadonlyArray<Message>
}

/**
 * Decodes messages of any shape. Well-formed text messages take a fast path;
 * anything else goes through Schema. What cannot be decoded is returned as
 * `issues`, never as a failure: malformed input must not break a call.
 */
export const decodeMessagesLenient = (input: unknown): {
  readonly messages: ReadonlyArray<Message>
  readonly issues: ReadonlyArray<string> | undefined
} => {
  if (input === undefined) return { messages: [], issues: undefined }
  const plain = plainMessages(input)
  if (plain !== undefined) return { messages: plain, issues: undefined }
  const decoded = decodeMessages(input)
  if (Either.isRight(decoded)) return { messages: decoded.right, issues: undefined }
  // Keep every message that decodes on its own, report the others.
  if (Array.isArray(input)) {
    const messages: Array<Message> = []
    const issues: Array<string> = []
    input.forEach((item, index) => {
      const one = Schema.decodeUnknownEither(Message)(item)
      if (Either.isRight(one)) messages.push(one.right)
      else issues.push(`messages[${index}]: ${ParseResult.TreeFormatter.formatErrorSync(one.left)}`)
    })
    return { messages, issues }
  }
  return { messages: [], issues: [`messages: ${ParseResult.TreeFormatter.formatErrorSync(decoded.left)}`] }
}

const decodeResponse = Schema.decodeUnknownEither(LlmResponse, { errors: "all" })
const decodePythonResponse = Schema.decodeUnknownEither(PythonResponse, { errors: "all" })

const isNonNegativeInt = (u: unknown): u is number => typeof u === "number" && Number.isInteger(u) && u >= 0

const isPlainUsage = (u: unknown): boolean =>
  u === undefined ||
  (typeof u === "object" && u !== null && isNonNegativeInt((u as any).promptTokens) &&
    isNonNegativeInt((u as any).completionTokens) && isNonNegativeInt((u as any).totalTokens) &&
    ((u as any).estimated === undefined || typeof (u as any).estimated === "boolean") &&
    ((u as any).cachedTokens === undefined || isNonNegativeInt((u as any).cachedTokens)) &&
    ((u as any).reasoningTokens === undefined || isNonNegativeInt((u as any).reasoningTokens)))

/** `input` when it is a well-formed response of ours (nothing to decode), else `undefined`. */
export const plainResponse = (input: unknown): LlmResponse | undefined =>
  typeof input === "object" && input !== null && typeof (input as any).content === "string" &&
    isPlainUsage((input as any).usage) && !isPythonResponse(input)
    ? input as LlmResponse
    : undefined

/**
 * Decodes a response of any shape (ours or the Python design's dictionary).
 * What cannot be decoded is returned as `issues` with an empty response.
 */
export const decodeResponseLenient = (input: unknown): {
  readonly response: LlmResponse
  readonly issues: ReadonlyArray<string> | undefined
} => {
  const plain = plainResponse(input)
  if (plain !== undefined) return { response: plain, issues: undefined }
  const decoded = isPythonResponse(input) ? decodePythonResponse(input) : decodeResponse(input)
  if (Either.isRight(decoded)) return { response: decoded.right, issues: undefined }
  return {
    response: { content: typeof input === "string" ? input : "" },
    issues: [`response: ${ParseResult.TreeFormatter.formatErrorSync(decoded.left)}`]
  }
}
