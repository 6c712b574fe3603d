/**
 * The lifecycle phases, as one table. Each row names the phase, the `_tag`
 * of its event schema, the handler hook that hears it and its role in a
 * run's lifecycle; the event schemas (`Events`), the handler's hooks
 * (`Handler`, `Handler.composite`), the metric labels (`CallbackMetrics`),
 * the error schema (`HandlerError`) and the dispatch plans all read it.
 * Adding a phase is a row here, its event schema, and its entry in
 * `Events.PhaseEvents`.
 *
 * Roles:
 * - `open`: the first event of a run (an LLM call, a tool run). It decides
 *   who hears the rest: a handler that did not hear it hears nothing more
 *   of that run.
 * - `stream`: events between the open and the close of a run (stream
 *   chunks). They must never slow the run: see `internal/dispatch/chunks`.
 * - `close`: exactly one of them ends a run.
 */

/** The phases, in lifecycle order. */
export const phases = ["start", "chunk", "tool_start", "tool_end", "tool_error", "end", "error"] as const

/** One of the {@link phases}. */
export type Phase = (typeof phases)[number]

/** What a phase's event does in its run's lifecycle (see the module docs). */
export type Role = "open" | "stream" | "close"

/** Per phase: the `_tag` of its event, the name of the handler hook that hears it, its role. */
export const phaseTable = {
  start: { tag: "Start", hook: "onLlmStart", role: "open" },
  chunk: { tag: "Chunk", hook: "onLlmChunk", role: "stream" },
  tool_start: { tag: "ToolStart", hook: "onToolStart", role: "open" },
  tool_end: { tag: "ToolEnd", hook: "onToolEnd", role: "close" },
  tool_error: { tag: "ToolError", hook: "onToolError", role: "close" },
  end: { tag: "End", hook: "onLlmEnd", role: "close" },
  error: { tag: "Error", hook: "onLlmError", role: "close" }
} as const satisfies {
  readonly [P in Phase]: { readonly tag: string; readonly hook: `on${string}`; readonly role: Role }
}

/** The `_tag` of a phase's event. */
export type TagOf<P extends Phase> = (typeof phaseTable)[P]["tag"]

/** The name of a phase's handler hook. */
export type HookOf<P extends Phase> = (typeof phaseTable)[P]["hook"]

/**
 * A phase's position in {@link phases}. The per-phase tables a dispatch
 * reads for every invocation (a snapshot's plans, a handler's hooks and
 * meters) are arrays indexed by it: in V8, a property read whose name
 * varies at one place in the code (`hooks[phase]`, for a phase that is now
 * `start`, now `end`) is a megamorphic lookup, about 120 instructions, where
 * an array's element is a few.
 */
export type PhaseIndex = number

/** The index of each phase. */
export const phaseIndex: { readonly [P in Phase]: PhaseIndex } = Object.fromEntries(
  phases.map((phase, index) => [phase, index])
) as never

const indexByTag = new Map<string, PhaseIndex>(phases.map((phase, index) => [phaseTable[phase].tag, index]))

/** The index of the phase of an event's `_tag` (read once per dispatch). */
export const phaseIndexOfTag = (tag: string): PhaseIndex => indexByTag.get(tag)!

/** Each phase's role, by index. */
export const roleAt: ReadonlyArray<Role> = phases.map((phase) => phaseTable[phase].role)
