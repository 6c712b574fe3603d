/**
 * A TCP proxy of the tests' own, between a client and Redis on the loopback
 * interface, that injects network faults:
 *
 * - a dropped reply: bytes coming back from the server are swallowed and the
 *   connection is destroyed (at once, or after a stall during which every reply
 *   is swallowed), so the command reached (and ran on) the server but the
 *   client never hears the answer;
 * - a reset: bytes going to the server are discarded and the connection is
 *   reset, so the command never reaches the server.
 *
 * Faults are drawn per chunk of data with the configured probabilities from a
 * seeded generator, or armed one at a time with `dropNextReply`.
 */
import * as net from "node:net"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

/** Fault probabilities, per chunk of data. */
export interface Faults {
  /** Probability that a chunk from the server is swallowed and its connection destroyed. */
  readonly dropReply: number
  /** Probability that a chunk to the server is discarded and its connection reset. */
  readonly reset: number
  /**
   * After a dropped reply, how long the connection stays open, swallowing
   * every reply while still forwarding commands, before it is destroyed: the
   * client sees silence (its command timeout) rather than a closed socket.
   * Default 0: destroyed at once.
   */
  readonly stallMillis?: number | undefined
}

/** What the proxy did so far. */
export interface Counters {
  readonly connections: number
  readonly repliesDropped: number
  readonly resets: number
  readonly chunksToServer: number
  readonly chunksToClient: number
}

/** A running fault proxy. */
export interface FaultProxy {
  readonly port: number
  /** `redis://127.0.0.1:<port>` */
  readonly url: string
  readonly setFaults: (faults: Faults) => Effect.Effect<void>
  /** Arms one dropped reply: the next chunk from the server, on any connection. */
  readonly dropNextReply: Effect.Effect<void>
  readonly counters: Effect.Effect<Counters>
}

// mulberry32: a small seeded generator, so that a failing run can be replayed.
const seeded = (seed: number) => {
  let state = seed >>> 0
  return (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Starts a proxy on a free loopback port forwarding to `target` (a loopback
 * port); it is closed, with every connection through it, when the scope closes.
 */
export const make = (options: {
  readonly targetPort: number
  readonly faults?: Faults | undefined
  readonly seed?: number | undefined
}): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.gen(function*() {
    const random = seeded(options.seed ?? 42)
    let faults: Faults = options.faults ?? { dropReply: 0, reset: 0 }
    let dropNext = false
    const counters = { connections: 0, repliesDropped: 0, resets: 0, chunksToServer: 0, chunksToClient: 0 }
    const sockets = new Set<net.Socket>()
    const timers = new Set<ReturnType<typeof setTimeout>>()

    const track = (socket: net.Socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
      // Faults make errors on these sockets the normal case.
      socket.on("error", () => {})
    }

    const onConnection = (client: net.Socket) => {
      counters.connections++
      const upstream = net.connect({ host: "127.0.0.1", port: options.targetPort })
      track(client)
      track(upstream)
      client.once("close", () => upstream.destroy())
      upstream.once("close", () => client.destroy())
      client.on("data", (chunk: Buffer) => {
        counters.chunksToServer++
        if (faults.reset > 0 && random() < faults.reset) {
          counters.resets++
          client.resetAndDestroy()
          upstream.destroy()
          return
        }
        upstream.write(chunk)
      })
      let stalled = false
      upstream.on("data", (chunk: Buffer) => {
        counters.chunksToClient++
        if (stalled) return
        if (dropNext || (faults.dropReply > 0 && random() < faults.dropReply)) {
          dropNext = false
          counters.repliesDropped++
          const destroy = () => {
            client.destroy()
            upstream.destroy()
          }
          const stallMillis = faults.stallMillis ?? 0
          if (stallMillis <= 0) return destroy()
          stalled = true
          const timer = setTimeout(() => {
            timers.delete(timer)
            destroy()
          }, stallMillis)
          timers.add(timer)
          return
        }
        client.write(chunk)
      })
    }

    const server = yield* Effect.acquireRelease(
      Effect.async<net.Server>((resume) => {
        const server = net.createServer(onConnection)
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
      }),
      (server) =>
        Effect.async<void>((resume) => {
          for (const timer of timers) clearTimeout(timer)
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    return {
      port,
      url: `redis://127.0.0.1:${port}`,
      setFaults: (next) => Effect.sync(() => void (faults = next)),
      dropNextReply: Effect.sync(() => void (dropNext = true)),
      counters: Effect.sync(() => ({ ...counters }))
    }
  })
