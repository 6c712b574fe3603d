/**
 * Opening a SQLite file: `@effect/sql-sqlite-node` opens it when its layer is
 * built, and what the driver throws then (a directory that does not exist, a
 * file that cannot be opened or is not a database) is a defect there, with a
 * message that does not name the file. The layers of this package fail with
 * a `ConfigError` naming `filename` and the file instead.
 */
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Layer from "effect/Layer"

/** `layer` (a SQLite client's), with what it fails or dies of as a `ConfigError` naming the file. */
export const opened = <A, E, R>(
  layer: Layer.Layer<A, E, R>,
  filename: string
): Layer.Layer<A, ConfigError.ConfigError, R> =>
  Layer.catchAllCause(layer, (cause) => {
    if (Cause.isInterruptedOnly(cause)) return Layer.failCause(cause as Cause.Cause<never>)
    const reason = Cause.squash(cause)
    return Layer.fail(
      ConfigError.InvalidData(
        ["filename"],
        `Cannot open the SQLite file ${JSON.stringify(filename)}: ${reason instanceof Error ? reason.message : String(reason)}`
      )
    )
  })
