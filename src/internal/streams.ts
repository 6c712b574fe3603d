/**
 * A fiber ref for a stream's own work: the call context and the budget's gate
 * of a stream handed to someone else to run (an HTTP response) must hold
 * while the stream runs, not where it was built, and must not leak into what
 * the consuming fiber does between pulls.
 */
import * as Effect from "effect/Effect"
import type * as FiberRef from "effect/FiberRef"
import * as Predicate from "effect/Predicate"
import * as Stream from "effect/Stream"

/**
 * `self` with each of its pulls run through `around`: its steps (a call begun
 * in its first pull, the parts it streams) and the fibers they fork; its
 * finalizers run outside them, on what the pulls captured.
 */
export const aroundPulls = <A, E, R>(
  self: Stream.Stream<A, E, R>,
  around: <X, Y, Z>(pull: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>
): Stream.Stream<A, E, R> => Stream.fromPull(Effect.map(Stream.toPull(self), around))

/** `self` with `ref` changed by `f` for each of its pulls (see {@link aroundPulls}). */
export const locallyWith = <A, E, R, V>(
  self: Stream.Stream<A, E, R>,
  ref: FiberRef.FiberRef<V>,
  f: (value: V) => V
): Stream.Stream<A, E, R> => aroundPulls(self, (pull) => Effect.locallyWith(pull, ref, f))

/** Whether `u` is a stream (the pipeable combinators that take an effect or a stream tell them apart by it). */
export const isStream = (u: unknown): u is Stream.Stream<unknown, unknown, unknown> =>
  Predicate.hasProperty(u, Stream.StreamTypeId)
