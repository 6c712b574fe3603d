/**
 * The parent call ids of the current fiber, for `instrument` and the call
 * context's `withParent` / `pushParent` / `popParent`.
 */
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"

/**
 * The ids of the instrumented calls enclosing the current fiber, innermost
 * last. A mutable holder, pushed and popped in place by `instrument`, which
 * spares the hot path fiber-ref updates (each a copy of the fiber's ref map).
 *
 * A fiber uses only a holder of its own. `fork` gives every forked fiber a
 * copy (the parents of the moment it was forked), which its first use claims
 * (`owner`). A fiber with no holder, or whose holder is another fiber's (fiber
 * refs are copied wholesale by `Effect.provide` of a runtime), makes one,
 * with a fiber-ref update. The dispatcher's layer installs an empty
 * `template` where it is built, which is never used itself: it is there so
 * that the fibers forked from there, a runtime's included, get a holder at
 * birth and a call in them makes no fiber-ref update.
 */
export class ParentStack {
  /** The id of the fiber that uses it; `undefined` until its first use. */
  owner: number | undefined = undefined
  /**
   * The ids are the first `depth` slots. A slot freed is kept, not removed:
   * a list emptied by `pop` gives up its storage, and the next call's push
   * made a new one (about 50 bytes a call, for the commonest case of calls
   * made one after the other, each the only one on its fiber).
   */
  private depth: number

  /**
   * `slots`: a list of its own (see {@link spareSlot} for its kind) whose
   * first `depth` are the ids, innermost last (all of them by default), the
   * others spare (holding `""`).
   */
  constructor(private readonly slots: Array<string>, readonly template = false, depth = slots.length) {
    this.depth = depth
  }

  /**
   * The holder of a fiber forked from its own: the same ids, with the slot
   * after them when it has one (a copy without it grew its storage at its
   * first push, about 150 bytes, for every root fiber of a runtime: `fork`
   * runs for each).
   */
  fork(): ParentStack {
    const depth = this.depth
    return new ParentStack(this.slots.slice(0, depth < this.slots.length ? depth + 1 : depth), false, depth)
  }

  /** The ids, innermost last: a copy (a list of the same kind). */
  get ids(): Array<string> {
    return this.slots.slice(0, this.depth)
  }

  isEmpty(): boolean {
    return this.depth === 0
  }

  /** The innermost id. */
  top(): string | undefined {
    return this.depth === 0 ? undefined : this.slots[this.depth - 1]
  }

  push(callId: string): void {
    this.slots[this.depth++] = callId
  }

  /** Removes `callId`, the innermost id in the commonest case (calls end in the order they began). */
  remove(callId: string): void {
    const slots = this.slots
    const depth = this.depth
    if (depth === 0) return
    const index = slots[depth - 1] === callId ? depth - 1 : slots.lastIndexOf(callId, depth - 1)
    if (index < 0) return
    for (let i = index + 1; i < depth; i++) slots[i - 1] = slots[i]!
    // The freed slot keeps a string (the list stays one of strings), not the id.
    slots[depth - 1] = ""
    this.depth = depth - 1
  }
}

/**
 * Storage for one id, none held yet: a list that V8 keeps as a list of any
 * values, as one that held a string is (an empty `[]` is kept as a list of
 * small integers, and the first id pushed onto it changed its kind, which
 * made every call's push the generic one, about 360 instructions instead of
 * a few dozen), with room for the first push (a list emptied by `pop` gives
 * up its storage). Copies of it (`slice`) keep its kind.
 */
const spareSlot = (): Array<string> => [""]

/**
 * Shared by the copies of this module in one process (`globalValue`), under
 * a key that names the holder's shape: a copy whose holder has another shape
 * (the ids were a bare list, then a holder without `fork`) keeps a ref of its own.
 */
export const currentParents: FiberRef.FiberRef<ParentStack | undefined> = globalValue(
  Symbol.for("effect-llm-callbacks/Callbacks/currentParents/forked"),
  () =>
    FiberRef.unsafeMake<ParentStack | undefined>(undefined, {
      fork: (stack) => stack?.fork(),
      // A parent keeps its own; one without takes a template (layers built side by side), nothing else.
      join: (parent, child) => parent ?? (child?.template === true ? child : undefined)
    })
)

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

export const setFiberRef = <X>(fiber: AnyFiber, ref: FiberRef.FiberRef<X>, value: X): void =>
  (fiber as unknown as { setFiberRef: <Y>(ref: FiberRef.FiberRef<Y>, value: Y) => void }).setFiberRef(ref, value)

/** Installs a template holder where none is (see {@link ParentStack}): for the dispatcher's layers. */
export const installTemplate: Effect.Effect<void> = FiberRef.update(
  currentParents,
  (stack) => stack ?? new ParentStack(spareSlot(), true, 0)
)

/** The fiber's holder, when it is its own (claimed, or a copy not used yet). */
const ownOf = (fiber: AnyFiber): ParentStack | undefined => {
  const stack = fiber.getFiberRef(currentParents)
  if (stack === undefined || stack.template) return undefined
  const id = fiber.id().id
  if (stack.owner === undefined) stack.owner = id
  return stack.owner === id ? stack : undefined
}

/** The fiber's holder, made (and set on the fiber) when it has none of its own. */
export const parentsOf = (fiber: AnyFiber): ParentStack => {
  const own = ownOf(fiber)
  if (own !== undefined) return own
  const stack = new ParentStack(spareSlot(), false, 0)
  stack.owner = fiber.id().id
  setFiberRef(fiber, currentParents, stack)
  return stack
}

/** The innermost call enclosing the fiber. */
export const enclosingOf = (fiber: AnyFiber): string | undefined => ownOf(fiber)?.top()

/** Removes `callId` from the fiber's own holder, if it has one. */
export const popParentOf = (fiber: AnyFiber, callId: string): void => {
  ownOf(fiber)?.remove(callId)
}
