/**
 * The steps that complete a call's end event before any handler hears it,
 * each reading what it needs from the caller's context. They run in order,
 * once per call; a step that has nothing to add returns the event as it is.
 */
import * as Context from "effect/Context"
import * as Cost from "../Cost.js"
import type { EndEvent, ErrorEvent } from "../Events.js"

/** One step: the end event, completed from the caller's context. */
export type EndStep = (context: Context.Context<never>, event: EndEvent) => EndEvent

/** `response.costEstimate`, from the price table in force (`Cost.CurrentPriceTable`). */
export const costEstimate: EndStep = (context, event) => {
  const table = Context.get(context, Cost.CurrentPriceTable)
  if (table === Cost.empty) return event
  const response = Cost.withEstimate(table, event.call.model, event.response)
  return response === event.response ? event : { ...event, response }
}

/** The steps, in order. */
export const endSteps: ReadonlyArray<EndStep> = [costEstimate]

/** The end event after every step. */
export const enrichEnd = (context: Context.Context<never>, event: EndEvent): EndEvent => {
  for (let i = 0; i < endSteps.length; i++) event = endSteps[i]!(context, event)
  return event
}

/**
 * The error event of a call that consumed tokens before it failed (its
 * `response` carries them), with their cost from the price table in force.
 */
export const enrichError = (context: Context.Context<never>, event: ErrorEvent): ErrorEvent => {
  const response = event.response
  if (response === undefined || response.usage === undefined) return event
  const table = Context.get(context, Cost.CurrentPriceTable)
  if (table === Cost.empty) return event
  const priced = Cost.withEstimate(table, event.call.model, response)
  return priced === response ? event : { ...event, response: priced }
}
