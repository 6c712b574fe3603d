/**
 * The lifecycle phases, as one table. Each row names the phase, the `_tag`
 * of its event schema and the handler hook that hears it; the event schemas
 * (`Events`), the handler's hooks (`Handler`, `Handler.composite`), the
 * metric labels (`CallbackMetrics`), the error schema (`HandlerError`) and
 * the dispatch plans all read it. Adding a phase is a row here, its event
 * schema, and its entry in `Events.PhaseEvents`.
 */

/** The phases, in lifecycle order. */
export const phases = ["start", "end", "error"] as const

/** One of the {@link phases}. */
export type Phase = (typeof phases)[number]

/** Per phase: the `_tag` of its event and the name of the handler hook that hears it. */
export const phaseTable = {
  start: { tag: "Start", hook: "onLlmStart" },
  end: { tag: "End", hook: "onLlmEnd" },
  error: { tag: "Error", hook: "onLlmError" }
} as const satisfies { readonly [P in Phase]: { readonly tag: string; readonly hook: `on${string}` } }

/** The `_tag` of a phase's event. */
export type TagOf<P extends Phase> = (typeof phaseTable)[P]["tag"]

/** The name of a phase's handler hook. */
export type HookOf<P extends Phase> = (typeof phaseTable)[P]["hook"]

/** The phase of each event `_tag`. */
export const phaseByTag: { readonly [P in Phase as TagOf<P>]: P } = Object.fromEntries(
  phases.map((phase) => [phaseTable[phase].tag, phase])
) as never
