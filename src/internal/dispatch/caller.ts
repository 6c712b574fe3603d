/**
 * What a dispatch takes from the fiber that dispatches: its tracer (a span
 * per handler invocation when a real one is installed), and, for the hooks
 * that need them, its refs, scheduler, clock and enclosing calls; and the
 * refs that hook fibers inherit, kept from one dispatch to the next.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Equal from "effect/Equal"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as FiberRefs from "effect/FiberRefs"
import { globalValue } from "effect/GlobalValue"
import * as Scheduler from "effect/Scheduler"
import type * as Tracer from "effect/Tracer"
import { tracing } from "../callSpan.js"
import { currentParents, ParentStack } from "../parents.js"
import { type FiberClass, fiberClassOf, hookScheduler, wakesInMicrotasks } from "./hookFiber.js"

/** What this module reads of a dispatcher's state: the refs its hook fibers inherit (see `State`). */
interface Dispatching {
  readonly inherited: InheritedRefs
}

/** What a dispatch needs to open a span per handler invocation, when a real tracer is installed. */
export interface Tracing {
  readonly tracer: Tracer.Tracer
  readonly clock: Clock.Clock
}

export const tracingOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Tracing | undefined =>
  tracing(fiber) ? { tracer: fiber.currentTracer, clock: Context.get(fiber.currentDefaultServices, Clock.Clock) } : undefined

/**
 * What hooks take from the dispatching fiber: its refs, read only when a hook
 * needs a fiber of its own (a hook that returns a completed effect never
 * does) or returns a commit (its scheduler says whether the commit may wait
 * with no fiber: see `fiberless`), and its clock (retry schedules step on
 * it), read only when an invocation suspends or retries. One object per
 * dispatch, with no closure: most dispatches read neither.
 */
export class Caller {
  private clockRead: Clock.Clock | undefined = undefined
  private refsRead: FiberRefs.FiberRefs | undefined = undefined
  /** The inherited refs when they serve every hook fiber of the dispatch (see {@link inheritedRefs}). */
  private sharedRefs: FiberRefs.FiberRefs | undefined = undefined
  /** Its refs were found to fork to a new value each time: each hook fiber forks them (see {@link inheritedRefs}). */
  private forkedPerFiber = false
  /** Its parent stack (`null`: not read yet), as it is: its ids are copied per hook fiber. */
  private parentsRead: ParentStack | undefined | null = null
  /** The class its hook fibers are made of (`null`: not read yet). */
  private fiberClassRead: FiberClass | undefined | null = null
  /** Whether its hooks may wait with no fiber (`undefined`: not read yet). */
  private fiberlessRead: boolean | undefined = undefined

  constructor(
    readonly fiber: Fiber.RuntimeFiber<unknown, unknown>,
    private readonly kept: InheritedRefs
  ) {}

  /** Its clock: read only by an invocation that suspends or retries. */
  get clock(): Clock.Clock {
    return this.clockRead ??= Context.get(this.fiber.currentDefaultServices, Clock.Clock)
  }

  refs(): FiberRefs.FiberRefs {
    return this.refsRead ??= refsOf(this.fiber)
  }

  /** The ids of the instrumented calls it is inside, innermost last, a copy of its own; none when empty. */
  parentIds(): Array<string> | undefined {
    if (this.parentsRead === null) this.parentsRead = this.refs().locals.get(currentParents)?.[0][1] as ParentStack | undefined
    const stack = this.parentsRead
    return stack === undefined || stack.isEmpty() ? undefined : stack.ids
  }

  /** The class of its fiber, of which its hook fibers are made (see `startHookFiber`). */
  fiberClass(): FiberClass | undefined {
    if (this.fiberClassRead === null) this.fiberClassRead = fiberClassOf(this.fiber)
    return this.fiberClassRead
  }

  /**
   * Whether its hooks' attempts may wait on an `Async` step with no fiber
   * (see `begin`): when a hook fiber of its would be woken in a microtask
   * (see `wakesInMicrotasks`), as such an attempt is. On a scheduler of its
   * own, its hooks run on fibers, which that scheduler wakes.
   */
  fiberless(): boolean {
    return this.fiberlessRead ??= wakesInMicrotasks(schedulerOf(this.refs().locals))
  }

  /**
   * Its refs as a fiber forked from it inherits them, less its context (a
   * hook fiber gets its handler's) and its parent stack (see `hookRefs`),
   * with the scheduler of hook fibers (see `hookScheduler`).
   *
   * Forked once for all of the dispatch's hook fibers when every ref forks to
   * one value whichever fiber forks it (see `forksAlike`): forking once then
   * gives every child what forking per child would, the whole map again for
   * each. They are kept for later dispatches too (`kept`): as they are while
   * their callers hold the same values, with a caller's own values where it
   * differs only in refs that fork to their value (see {@link InheritedRefs}).
   * A ref whose fork makes a new value each time (a copy of a mutable one)
   * gets each fiber a copy of its own: the refs are forked per hook fiber then.
   */
  inheritedRefs(): FiberRefs.FiberRefs {
    if (this.sharedRefs !== undefined) return this.sharedRefs
    const refs = this.refs()
    if (!this.forkedPerFiber) {
      const kept = this.kept.get(refs)
      if (kept !== undefined) return this.sharedRefs = kept
    }
    const forked = FiberRefs.forkAs(refs, hooksFiberId)
    const locals = new Map(forked.locals)
    locals.delete(FiberRef.currentContext)
    locals.delete(currentParents)
    const scheduler = hookScheduler(schedulerOf(locals))
    if (scheduler !== undefined) locals.set(FiberRef.currentScheduler, [[hooksFiberId, scheduler]])
    locals.set(hookOwner, [[hooksFiberId, this.kept]])
    const inherited = FiberRefs.unsafeMake(locals)
    // Checked once per dispatch: its next hook fibers fork the refs without looking again.
    if (this.forkedPerFiber) return inherited
    if (forksAlike(refs, forked)) {
      this.kept.set(refs, inherited)
      this.sharedRefs = inherited
    } else {
      this.forkedPerFiber = true
    }
    return inherited
  }
}

/** The scheduler held in a fiber's refs (Effect's default where none is set). */
const schedulerOf = (locals: FiberRefs.FiberRefs["locals"]): Scheduler.Scheduler =>
  (locals.get(FiberRef.currentScheduler)?.[0][1] as Scheduler.Scheduler | undefined) ?? Scheduler.defaultScheduler

/**
 * A fiber's refs as they are, without the copy that `getFiberRefs` makes to
 * set the fiber's runtime flags in them (hook fibers take none from their
 * caller: they have their own). A ref map is never changed in place (a
 * fiber's update makes a new one), so the one read is a snapshot.
 */
const refsOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): FiberRefs.FiberRefs =>
  (fiber as unknown as { readonly _fiberRefs?: FiberRefs.FiberRefs })._fiberRefs ?? fiber.getFiberRefs()

/** The fiber id that the refs inherited by hook fibers are forked as (see `Caller.inheritedRefs`). */
const hooksFiberId = FiberId.runtime(-1, 0)

/**
 * Whose hook a fiber runs: the kept refs (one {@link InheritedRefs} per
 * dispatcher) of the dispatcher that started it. Set on every hook fiber, and
 * inherited by the fibers a hook forks, so that a call a hook makes is known
 * as its own (see {@link runsHookOf}).
 */
const hookOwner: FiberRef.FiberRef<InheritedRefs | undefined> = globalValue(
  Symbol.for("effect-llm-callbacks/internal/hookOwner"),
  () => FiberRef.unsafeMake<InheritedRefs | undefined>(undefined)
)

/**
 * Whether `fiber` runs inside a hook of the dispatcher of `state` (a hook
 * fiber, or a fiber a hook forked): its calls are a hook's. Read only where
 * it would otherwise wait for the dispatcher's room (a slot, buffer space).
 */
export const runsHookOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, state: Dispatching): boolean =>
  fiber.getFiberRef(hookOwner) === state.inherited

export const callerOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, state: Dispatching): Caller =>
  new Caller(fiber, state.inherited)

/**
 * The refs that hook fibers inherit from callers, kept from one dispatch to
 * the next (one per dispatcher): a dispatch whose caller holds the same
 * values as the last one's (the root fibers of one runtime do, and fibers in
 * one span) reuses them, without forking or copying a ref map. A caller
 * whose values differ only in refs that fork to the value they hold (as most
 * do: a call context or log annotations set per request) gets them with its
 * own values of those refs, as a fork would: one map copy, no fork of every
 * ref. The context (a hook fiber gets its handler's), the parent stack
 * (copied per hook fiber when not empty) and the runtime flags (a fiber's
 * own, not kept up to date in its ref map) are not compared, nor kept.
 */
export class InheritedRefs {
  /** The values they were made from, of the refs compared. */
  private values: Map<FiberRef.FiberRef<unknown>, unknown> | undefined = undefined
  private refs: FiberRefs.FiberRefs | undefined = undefined

  /**
   * The refs kept, when `caller` holds the values they were made from; with
   * its own values of the refs where it differs, when each of those forks to
   * the value it holds (and is not the scheduler, which hook fibers wrap),
   * kept from then on; `undefined` otherwise (the caller's refs are forked then).
   */
  get(caller: FiberRefs.FiberRefs): FiberRefs.FiberRefs | undefined {
    const values = this.values
    if (values === undefined) return undefined
    let shared = 0
    let usable = true
    let differing: Array<FiberRef.FiberRef<unknown>> | undefined
    // `forEach`, not `for...of`: an entry array per ref on every dispatch otherwise.
    caller.locals.forEach((stack, ref) => {
      if (!usable || !isCompared(ref)) return
      const held = stack[0][1]
      const value = values.get(ref)
      if (value !== undefined || values.has(ref)) {
        shared++
        if (value === held) return
      }
      if (ref === FiberRef.currentScheduler || !forksToItself(ref, held)) usable = false
      else (differing ??= []).push(ref)
    })
    // A ref the kept ones were made with that the caller lacks: it holds the initial value, forked anew.
    if (!usable || shared !== values.size) return undefined
    if (differing === undefined) return this.refs
    const locals = new Map(this.refs!.locals)
    for (let i = 0; i < differing.length; i++) {
      const ref = differing[i]!
      const stack = caller.locals.get(ref)!
      // As a fork keeps a ref that forks to its value: the caller's own stack.
      locals.set(ref, stack)
      values.set(ref, stack[0][1])
    }
    // Kept in their turn: the call's next dispatches (its terminal event) find them as they are.
    return this.refs = FiberRefs.unsafeMake(locals)
  }

  set(caller: FiberRefs.FiberRefs, refs: FiberRefs.FiberRefs): void {
    const values = new Map<FiberRef.FiberRef<unknown>, unknown>()
    for (const [ref, stack] of caller.locals) if (isCompared(ref)) values.set(ref, stack[0][1])
    this.values = values
    this.refs = refs
  }
}

/**
 * The refs a handler's hook fibers start from when their caller is in no
 * span and no call: the inherited refs kept (see {@link InheritedRefs}) with
 * the handler's context, made once per inherited refs.
 */
export class HookRefs {
  inherited: FiberRefs.FiberRefs | undefined = undefined
  refs: FiberRefs.FiberRefs | undefined = undefined
}

/** How `FiberRefs.forkAs` forks a ref's value (members of Effect's `FiberRef` it does not export). */
interface Forking {
  readonly fork?: unknown
  readonly patch?: (patch: unknown) => (value: unknown) => unknown
}

/** Whether a fiber forked from one holding `value` in `ref` holds `value` too (as `FiberRefs.forkAs` finds it). */
const forksToItself = (ref: FiberRef.FiberRef<unknown>, value: unknown): boolean => {
  const { fork, patch } = ref as unknown as Forking
  return patch !== undefined && Equal.equals(value, patch.call(ref, fork)(value))
}

const isCompared = (ref: FiberRef.FiberRef<unknown>): boolean =>
  ref !== FiberRef.currentContext && ref !== FiberRef.currentRuntimeFlags && ref !== currentParents &&
  ref !== hookOwner

/**
 * Whether one fork of `refs` serves every hook fiber: each ref (the parent
 * stack aside) forks to the same value whichever fiber forks it, kept as it
 * is (most of Effect's) or reset to one value (Effect's fork scope override),
 * not copied per fiber. `forked` is one fork; when a ref changed in it, the
 * refs are forked once more to compare.
 */
const forksAlike = (refs: FiberRefs.FiberRefs, forked: FiberRefs.FiberRefs): boolean => {
  let again: FiberRefs.FiberRefs | undefined
  for (const [ref, stack] of refs.locals) {
    if (ref === currentParents) continue
    const once = forked.locals.get(ref)
    if (once === stack) continue
    again ??= FiberRefs.forkAs(refs, hooksFiberId)
    if (again.locals.get(ref)?.[0][1] !== once?.[0][1]) return false
  }
  return true
}

/**
 * The refs an attempt's fiber starts from: those inherited from the caller
 * (see `Caller.inheritedRefs`), the hook's context, and, when the caller is
 * inside instrumented calls, a parent stack of its own with their ids. (The
 * parent stack is the one mutable value among them, pushed and popped in
 * place by the instrumented calls a hook makes and claimed by the fiber that
 * uses it first: shared by the dispatch's hook fibers, or by the attempts of
 * one hook, a hook's call would see another's as parent, or none. Without
 * one, a hook's first instrumented call makes its own.) `context`: the
 * hook's. Outside any call, and when the call is not traced, they are the
 * handler's `kept` refs (`Entry.hookRefs`), made once.
 */
export const hookRefsOf = (
  caller: Caller,
  context: Context.Context<never>,
  kept: HookRefs | undefined
): FiberRefs.FiberRefs => {
  const inherited = caller.inheritedRefs()
  const parentIds = caller.parentIds()
  if (parentIds !== undefined) {
    return FiberRefs.updateManyAs(inherited, {
      entries: [
        [FiberRef.currentContext, [[hooksFiberId, context]]],
        [currentParents, [[hooksFiberId, new ParentStack(parentIds)]]]
      ]
    })
  }
  if (kept !== undefined && kept.inherited === inherited) return kept.refs!
  const refs = FiberRefs.updateAs(inherited, { fiberId: hooksFiberId, fiberRef: FiberRef.currentContext, value: context })
  // (Inherited refs not kept are made per hook fiber: the next one's never match.)
  if (kept !== undefined) {
    kept.inherited = inherited
    kept.refs = refs
  }
  return refs
}
