#!/usr/bin/env node
/**
 * The `effect-llm-callbacks` executable (see `cli/Cli.ts`).
 *
 * The command line needs packages that the library itself does not: they are
 * optional peers, so a user who only wants the library does not install them.
 * When one is missing the executable says which, instead of a stack trace.
 *
 * @since 0.1.0
 */
const peers = ["@effect/cli", "@effect/platform", "@effect/platform-node", "ioredis"] as const

const isResolvable = (specifier: string): boolean => {
  // Node 20 before 20.6 has no `import.meta.resolve`: the imports below then
  // report a missing package themselves, less kindly.
  if (typeof import.meta.resolve !== "function") return true
  try {
    import.meta.resolve(specifier)
    return true
  } catch {
    return false
  }
}

const missing = peers.filter((peer) => !isResolvable(peer))

if (missing.length > 0) {
  process.stderr.write(
    `effect-llm-callbacks: the command line needs the packages ${missing.join(", ")}.\n` +
      `Install them next to effect-llm-callbacks: npm install ${missing.join(" ")}\n`
  )
  process.exitCode = 1
} else {
  // Module by module: the package root would load the HTTP stack as well.
  const [NodeContext, NodeRuntime, Cli, Cause, Effect, Exit, Option] = await Promise.all([
    import("@effect/platform-node/NodeContext"),
    import("@effect/platform-node/NodeRuntime"),
    import("../cli/Cli.js"),
    import("effect/Cause"),
    import("effect/Effect"),
    import("effect/Exit"),
    import("effect/Option")
  ])
  NodeRuntime.runMain(Cli.run(process.argv).pipe(Effect.provide(NodeContext.layer)), {
    disableErrorReporting: true,
    // The run has printed its errors; only the exit code is left to set.
    teardown: (exit, onExit) =>
      onExit(
        Exit.isSuccess(exit) ? 0 : Option.match(Cause.failureOption(exit.cause), {
          onNone: () => 1,
          onSome: (error) => error instanceof Cli.ExitCode ? error.code : 1
        })
      )
  })
}
