/**
 * The parent call ids of the current fiber, for `instrument` and the call
 * context's `withParent` / `pushParent` / `popParent`.
 */
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"

/**
 * The ids of the instrumented calls enclosing the current fiber, innermost
 * last. A mutable holder, one per fiber: `instrument` pushes and pops in
 * place, which spares the hot path two fiber-ref updates (each a copy of the
 * fiber's ref map). Sharing is prevented by `fork`: a forked fiber gets its own
 * copy (so it sees the parents of the moment it was forked), and `join` keeps
 * the parent fiber's holder.
 */
export class ParentStack {
  constructor(readonly ids: Array<string>) {}
}

export const currentParents: FiberRef.FiberRef<ParentStack | undefined> = globalValue(
  Symbol.for("effect-llm-callbacks/Callbacks/currentParents"),
  () =>
    FiberRef.unsafeMake<ParentStack | undefined>(undefined, {
      fork: (stack) => stack === undefined || stack.ids.length === 0 ? undefined : new ParentStack(stack.ids.slice()),
      join: (parent) => parent
    })
)

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

export const setFiberRef = <X>(fiber: AnyFiber, ref: FiberRef.FiberRef<X>, value: X): void =>
  (fiber as unknown as { setFiberRef: <Y>(ref: FiberRef.FiberRef<Y>, value: Y) => void }).setFiberRef(ref, value)

export const parentsOf = (fiber: AnyFiber): ParentStack => {
  let stack = fiber.getFiberRef(currentParents)
  if (stack === undefined) {
    stack = new ParentStack([])
    setFiberRef(fiber, currentParents, stack)
  }
  return stack
}

export const topOf = (stack: ParentStack | undefined): string | undefined =>
  stack === undefined || stack.ids.length === 0 ? undefined : stack.ids[stack.ids.length - 1]

export const removeParent = (stack: ParentStack, callId: string): void => {
  const ids = stack.ids
  if (ids[ids.length - 1] === callId) ids.pop()
  else {
    const index = ids.lastIndexOf(callId)
    if (index >= 0) ids.splice(index, 1)
  }
}

