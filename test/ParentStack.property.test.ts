/**
 * The parent stack (the ids of the instrumented calls enclosing a fiber)
 * keeps freed slots for reuse: checked against a plain list on random
 * sequences of pushes and removals, out-of-order ends, repeated ids and
 * removals of ids it does not hold included.
 */
import { assert, describe, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { ParentStack } from "../src/internal/parents.js"

type Op = { readonly push: string } | { readonly remove: string } | { readonly copy: true }

/** The list the stack must hold: a removal takes the innermost occurrence of the id, if any. */
const reference = (ids: Array<string>, op: Op): Array<string> => {
  if ("push" in op) return [...ids, op.push]
  if ("copy" in op) return ids
  const index = ids.lastIndexOf(op.remove)
  return index < 0 ? ids : [...ids.slice(0, index), ...ids.slice(index + 1)]
}

const id = fc.constantFrom("a", "b", "c", "d")
const op: fc.Arbitrary<Op> = fc.oneof(
  id.map((push) => ({ push })),
  id.map((remove) => ({ remove })),
  fc.constant({ copy: true as const })
)

describe("ParentStack", () => {
  it("holds what a plain list holds, after any sequence of pushes and removals", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), fc.boolean(), (ops, spare) => {
        // Empty, with a spare slot (as the dispatcher's template) or none.
        let stack = spare ? new ParentStack([""], false, 0) : new ParentStack([])
        let expected: Array<string> = []
        const copies: Array<readonly [ParentStack, ReadonlyArray<string>]> = []
        for (const step of ops) {
          if ("push" in step) stack.push(step.push)
          else if ("remove" in step) stack.remove(step.remove)
          else {
            // A fork's copy: the original goes on alone from here (and the copy is used instead).
            copies.push([stack, expected])
            stack = stack.fork()
          }
          expected = reference(expected, step)
          assert.deepStrictEqual(stack.ids, expected)
          assert.strictEqual(stack.top(), expected[expected.length - 1])
        }
        // The stacks copied from were left as they were.
        for (const [copied, held] of copies) assert.deepStrictEqual(copied.ids, held)
      }),
      { numRuns: 500 }
    )
  })

  it("reuses its storage: an id pushed after the stack was emptied is the only one", () => {
    const stack = new ParentStack([])
    stack.push("a")
    stack.remove("a")
    stack.remove("a")
    assert.deepStrictEqual(stack.ids, [])
    assert.isUndefined(stack.top())
    stack.push("b")
    assert.deepStrictEqual(stack.ids, ["b"])
  })
})
