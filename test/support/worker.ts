/**
 * Runs a worker of the tests (a TypeScript file, through tsx) in a process
 * of its own, for what only a process shows: that it exits, what it logs
 * once per process, several processes on one store.
 */
import * as Effect from "effect/Effect"
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"

/** The worker's standard output; fails with its error and standard error. Killed if the caller is interrupted. */
export const runWorker = (
  worker: URL,
  options?: { readonly args?: ReadonlyArray<string> | undefined; readonly timeoutMillis?: number | undefined }
): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const child = execFile(
      process.execPath,
      ["--import", "tsx", fileURLToPath(worker), ...(options?.args ?? [])],
      { timeout: options?.timeoutMillis ?? 50_000 },
      (error, stdout, stderr) =>
        resume(error === null ? Effect.succeed(stdout) : Effect.fail(new Error(`${error.message}\n${stderr}`)))
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** The worker's last line of output, as JSON (its report). */
export const workerReport = <A>(
  worker: URL,
  options?: { readonly args?: ReadonlyArray<string> | undefined; readonly timeoutMillis?: number | undefined }
): Effect.Effect<A, Error> => Effect.map(runWorker(worker, options), (stdout) => JSON.parse(stdout.trim().split("\n").at(-1)!) as A)
