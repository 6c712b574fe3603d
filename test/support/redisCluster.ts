/**
 * A real Redis Cluster for the tests: three masters (`redis-server
 * --cluster-enabled yes`) on free loopback ports, joined with `redis-cli
 * --cluster create`, each in a temporary directory of its own. Every server is
 * killed by its PID when the scope closes.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { freePort } from "./globalSetup.js"

/** A running cluster: its nodes as `127.0.0.1:<port>`. */
export interface RedisCluster {
  readonly nodes: ReadonlyArray<string>
}

const run = (command: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { timeout: 20_000 }, (error, stdout, stderr) =>
      error === null ? resolve(stdout) : reject(new Error(`${command} ${args.join(" ")}: ${error.message}\n${stderr}`)))
  )

const startNode = async (dir: string): Promise<{ readonly port: number; readonly child: ChildProcess }> => {
  const port = await freePort()
  const child = spawn("redis-server", [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    path.join(dir, `nodes-${port}.conf`),
    "--dir",
    dir
  ], { stdio: "ignore" })
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`redis-server (cluster node) exited on port ${port}`)
    const pong = await run("redis-cli", ["-p", String(port), "PING"]).catch(() => "")
    if (pong.trim() === "PONG") return { port, child }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`redis-server (cluster node) on port ${port} did not answer`)
}

const kill = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    process.kill(child.pid, "SIGKILL")
  })

/** Starts a 3-master cluster, ready (`cluster_state:ok` on every node) when this succeeds. */
export const redisCluster: Effect.Effect<RedisCluster, never, Scope.Scope> = Effect.acquireRelease(
  Effect.promise(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elc-cluster-"))
    const started = await Promise.all([startNode(dir), startNode(dir), startNode(dir)])
    const nodes = started.map((node) => `127.0.0.1:${node.port}`)
    try {
      await run("redis-cli", ["--cluster", "create", ...nodes, "--cluster-replicas", "0", "--cluster-yes"])
      const deadline = Date.now() + 20_000
      for (const node of started) {
        while (true) {
          const info = await run("redis-cli", ["-p", String(node.port), "CLUSTER", "INFO"])
          if (info.includes("cluster_state:ok")) break
          if (Date.now() > deadline) throw new Error(`cluster node ${node.port} never reached cluster_state:ok`)
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      }
    } catch (error) {
      await Promise.all(started.map((node) => kill(node.child)))
      throw error
    }
    return { nodes, started, dir }
  }),
  ({ dir, started }) =>
    Effect.promise(async () => {
      await Promise.all(started.map((node) => kill(node.child)))
      fs.rmSync(dir, { recursive: true, force: true })
    })
)
