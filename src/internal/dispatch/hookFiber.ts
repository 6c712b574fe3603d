/**
 * Hook fibers: how the fiber of a hook that must be run is started, and
 * scheduled. A hook fiber lives for one attempt of one invocation, which
 * holds it and ends it (interrupts it) when it times out or is cancelled;
 * most are woken once or twice in their life. What Effect pays for a
 * long-lived fiber is paid here per hook, so two costs are left out:
 *
 * - The global scope. `Runtime.runFork` enters every fiber it starts into
 *   Effect's set of root fibers (with an observer to leave it): with the set
 *   growing and shrinking as the fibers of a dispatch come and go, that entry
 *   was a large part of a hook fiber's cost (added back to the fibers started
 *   here, suspend x10 went from 86 to 105-128 µs per call). A hook fiber is
 *   started as `runFork` starts one, less that entry: a fiber of the caller's
 *   fiber's class, with its refs, the default runtime flags and the effect,
 *   its supervisor told. (Effect's `Fiber.roots` does not list hook fibers.)
 * - The scheduler's runner. Effect's default scheduler keeps a runner per
 *   fiber (a `WeakMap` entry, a runner and its priority buckets), made the
 *   first time the fiber is woken; so does `Scheduler.makeBatched`. A hook fiber woken from outside any fiber
 *   (a promise it awaits settled, a timer fired) runs in a microtask instead
 *   (with the others woken before it runs), as `await` resumes a function:
 *   one turn later, never on the waker's stack. What is scheduled from inside
 *   a fiber (an interruption, a `Deferred` completed) or while a hook fiber
 *   runs (a fiber yielding after its operation budget) goes to the caller's
 *   scheduler, which keeps the event loop fair.
 * - Effect's fiber metrics. Every fiber that Effect's default runtime flags
 *   start updates `effect_fiber_started` and `effect_fiber_active` when made
 *   and three more metrics when it ends (with a clock read): about 0.2 µs of
 *   the 1.2 µs a hook that runs synchronously costs (sync x10 went from 27
 *   to 23.5 µs per call without them). Hook fibers run without that flag: they
 *   are the dispatcher's machinery, not the application's fibers, and, as a
 *   fiber forked from a hook inherits its flags, nor are the fibers a hook
 *   forks counted. (Turning the flag back on inside each hook, for its forks,
 *   cost more than the metrics.) A hook that outlives its timeout shows in
 *   the dispatcher's `health`, as `overrunning`, not as an active fiber.
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRefs from "effect/FiberRefs"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as Scheduler from "effect/Scheduler"
import * as Supervisor from "effect/Supervisor"

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

/** How `runFork` makes a fiber, and starts it at once (Effect's `FiberRuntime`). */
export interface FiberClass {
  new(id: FiberId.Runtime, refs: FiberRefs.FiberRefs, flags: Runtime.Runtime<never>["runtimeFlags"]): AnyFiber & {
    readonly start: (effect: Effect.Effect<unknown, unknown>) => void
  }
}

/** A hook fiber's flags: Effect's defaults, less its fiber metrics (see the module's comment). */
const hookFlags = RuntimeFlags.disable(Runtime.defaultRuntimeFlags, RuntimeFlags.RuntimeMetrics)

/** Fibers started by `runFork` (with a supervisor) take everything from their refs: its own are empty. */
const bareRuntime: Runtime.Runtime<never> = Runtime.make({
  context: Context.empty(),
  fiberRefs: FiberRefs.empty(),
  runtimeFlags: hookFlags
})

/** The class of `fiber`, when it starts fibers as `runFork` does. */
export const fiberClassOf = (fiber: AnyFiber): FiberClass | undefined => {
  const candidate = Object.getPrototypeOf(fiber)?.constructor as FiberClass | undefined
  return typeof candidate === "function" && typeof candidate.prototype.start === "function" ? candidate : undefined
}

/**
 * Starts `effect` on a hook fiber with `refs` (see the module's comment), of
 * `FiberClass`, the class of the caller's fiber (`fiberClassOf`).
 */
export const startHookFiber = <E>(
  FiberClass: FiberClass | undefined,
  refs: FiberRefs.FiberRefs,
  effect: Effect.Effect<void, E>
): Fiber.RuntimeFiber<void, E> => {
  if (FiberClass === undefined) return Runtime.runFork(bareRuntime, effect, { updateRefs: () => refs })
  const fiber = new FiberClass(FiberId.unsafeMake(), refs, hookFlags)
  // As `runFork` tells a supervisor.
  const supervisor = fiber.currentSupervisor
  if (supervisor !== Supervisor.none) {
    supervisor.onStart(Context.empty(), effect, Option.none(), fiber)
    fiber.addObserver((exit) => supervisor.onEnd(exit, fiber))
  }
  fiber.start(effect)
  return fiber as Fiber.RuntimeFiber<void, E>
}

/** Drains are chained to it, as Effect's scheduler does (`queueMicrotask` costs an async resource per call). */
const resolved = Promise.resolve()

/**
 * Tasks run in the order given, in one microtask, with those given before
 * it runs: one turn later, as `await` resumes a function, never on the stack
 * of whoever gave them. What wakes hook fibers from outside any fiber (see
 * `hookScheduler`), and what resumes the attempts that wait with no fiber
 * (one per dispatcher: see `Invocation.awaitResume`).
 */
export class Microtasks {
  private tasks: Array<() => void> = []
  /** Its tasks are running. */
  running = false

  push(task: () => void): void {
    if (this.tasks.push(task) === 1) resolved.then(this.drain)
  }

  private readonly drain = (): void => {
    const tasks = this.tasks
    this.tasks = []
    this.running = true
    try {
      for (let i = 0; i < tasks.length; i++) tasks[i]!()
    } finally {
      this.running = false
    }
  }
}

class HookScheduler implements Scheduler.Scheduler {
  /** Wakes from outside any fiber. */
  private readonly wakes = new Microtasks()

  constructor(readonly scheduler: Scheduler.Scheduler) {}

  shouldYield(fiber: AnyFiber): number | false {
    return this.scheduler.shouldYield(fiber)
  }

  /** What is scheduled while wakes of ours run, or from inside a fiber, goes to `scheduler`. */
  scheduleTask(task: Scheduler.Task, priority: number, fiber?: AnyFiber): void {
    if (this.wakes.running || Option.isSome(Fiber.getCurrentFiber())) {
      return this.scheduler.scheduleTask(task, priority, fiber)
    }
    this.wakes.push(task)
  }
}

/**
 * The scheduler of the hook fibers of a caller on `scheduler` (see the
 * module's comment): for Effect's default, or a `ManagedRuntime`'s (which
 * hands its tasks to the default once the runtime is built); `undefined` for
 * any other, which is left to do its job.
 */
export const hookScheduler = (scheduler: Scheduler.Scheduler): Scheduler.Scheduler | undefined =>
  wakesInMicrotasks(scheduler) ? new HookScheduler(scheduler) : undefined

/**
 * Whether hooks of a caller on `scheduler` are woken from outside any fiber
 * in a microtask (see `hookScheduler`): those of Effect's default scheduler
 * and of a `ManagedRuntime`'s. A scheduler of the caller's own is left to do
 * its job.
 */
export const wakesInMicrotasks = (scheduler: Scheduler.Scheduler): boolean =>
  scheduler === Scheduler.defaultScheduler || scheduler instanceof Scheduler.SyncScheduler
