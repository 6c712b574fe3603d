/**
 * A real Redis Cluster for the tests: three masters (`redis-server
 * --cluster-enabled yes`), and optionally a replica of each, on free loopback
 * ports, joined with `redis-cli --cluster create`, sharing a temporary
 * directory. Every server is killed by its PID when the scope closes.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { freePort } from "./globalSetup.js"

/** A running cluster: its nodes as `127.0.0.1:<port>` (masters first, then their replicas). */
export interface RedisCluster {
  readonly nodes: ReadonlyArray<string>
  /** Kills node `i` (SIGKILL), as a crash would. */
  readonly kill: (i: number) => Effect.Effect<void>
  /**
   * Starts node `i` again on its port, with its cluster configuration (and,
   * on a durable cluster, its data); done when `settled` is.
   */
  readonly restart: (i: number) => Effect.Effect<void>
  /** Done when every node running reports `cluster_state:ok` (20 s at most, else it dies). */
  readonly settled: Effect.Effect<void>
  /**
   * Done when every master running has a replica that has everything it
   * wrote (its acknowledged offset is the master's; 20 s at most).
   */
  readonly replicated: Effect.Effect<void>
  /** With `tls`: the certificate (PEM) of the authority that signed the nodes'. */
  readonly ca: string | undefined
  /** With `tls: "mutual"`: a client certificate and its key (PEM), signed by the same authority. */
  readonly client: { readonly cert: string; readonly key: string } | undefined
}

/** Options of a test cluster. */
export interface ClusterOptions {
  /**
   * Each node writes every command to its append-only file before it answers
   * (`appendfsync always`): a node killed and started again keeps all it
   * acknowledged. Default false (nothing on disk).
   */
  readonly durable?: boolean | undefined
  /** A replica of each master; default false. */
  readonly replicas?: boolean | undefined
  /**
   * `cluster-node-timeout`: how long a node may be unreachable before the
   * others take it as failed (and a replica takes over). Default Redis' 15 s.
   */
  readonly nodeTimeoutMillis?: number | undefined
  /** Every node asks for this password (`requirepass`, and `masterauth` for its replicas). */
  readonly password?: string | undefined
  /**
   * Nodes reached over TLS only (`tls-port`, `tls-cluster`), with a
   * certificate for 127.0.0.1 from an authority of the test's own
   * (`RedisCluster.ca`). `"mutual"`: besides, every client must show a
   * certificate from that authority (`tls-auth-clients yes`; `RedisCluster.client`).
   */
  readonly tls?: boolean | "mutual" | undefined
}

const run = (command: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { timeout: 20_000 }, (error, stdout, stderr) =>
      error === null ? resolve(stdout) : reject(new Error(`${command} ${args.join(" ")}: ${error.message}\n${stderr}`)))
  )

interface Node {
  readonly port: number
  readonly child: ChildProcess
}

/** A cluster's options and its directory. */
interface Settings extends ClusterOptions {
  readonly dir: string
}

/**
 * An authority, a certificate for 127.0.0.1 signed by it and a client's, in `dir` (`ca.crt`, `node.crt`,
 * `node.key`, `client.crt`, `client.key`).
 */
const makeCertificates = async (dir: string): Promise<void> => {
  const file = (name: string) => path.join(dir, name)
  await run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", file("ca.key"), "-out", file("ca.crt"), "-days", "2", "-subj", "/CN=test-ca"])
  const signed = async (name: string, subject: string, extensions: string) => {
    await run("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", file(`${name}.key`), "-out", file(`${name}.csr`), "-subj", subject])
    fs.writeFileSync(file(`${name}.ext`), extensions)
    await run("openssl", ["x509", "-req", "-in", file(`${name}.csr`), "-CA", file("ca.crt"), "-CAkey", file("ca.key"), "-CAcreateserial", "-out", file(`${name}.crt`), "-days", "2", "-extfile", file(`${name}.ext`)])
  }
  await signed("node", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\n")
  await signed("client", "/CN=test-client", "extendedKeyUsage=clientAuth\n")
}

/** redis-cli's arguments for the cluster: its password, TLS. */
const cliArgs = (settings: Settings): ReadonlyArray<string> => [
  ...(settings.password === undefined ? [] : ["-a", settings.password, "--no-auth-warning"]),
  ...(settings.tls === undefined || settings.tls === false ? [] : ["--tls", "--cacert", path.join(settings.dir, "ca.crt")]),
  ...(settings.tls === "mutual"
    ? ["--cert", path.join(settings.dir, "client.crt"), "--key", path.join(settings.dir, "client.key")]
    : [])
]

const startNode = async (settings: Settings, port_?: number): Promise<Node> => {
  const { dir } = settings
  const port = port_ ?? await freePort()
  const persistence = settings.durable === true
    ? ["--appendonly", "yes", "--appendfsync", "always", "--appenddirname", `aof-${port}`]
    : ["--appendonly", "no"]
  const timeout = settings.nodeTimeoutMillis === undefined ? [] : ["--cluster-node-timeout", String(settings.nodeTimeoutMillis)]
  const auth = settings.password === undefined ? [] : ["--requirepass", settings.password, "--masterauth", settings.password]
  const tls = settings.tls === true || settings.tls === "mutual"
    ? [
      "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", settings.tls === "mutual" ? "yes" : "no",
      "--tls-cert-file", path.join(dir, "node.crt"), "--tls-key-file", path.join(dir, "node.key"),
      "--tls-ca-cert-file", path.join(dir, "ca.crt")
    ]
    : []
  const child = spawn("redis-server", [
    ...(settings.tls === true || settings.tls === "mutual" ? ["--port", "0", "--tls-port", String(port)] : ["--port", String(port)]),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    ...persistence,
    ...timeout,
    ...auth,
    ...tls,
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
    const pong = await run("redis-cli", [...cliArgs(settings), "-p", String(port), "PING"]).catch(() => "")
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

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** Waits until every node of `ports` reports `cluster_state:ok` (20 s at most). */
const clusterOk = async (settings: Settings, ports: ReadonlyArray<number>): Promise<void> => {
  const deadline = Date.now() + 20_000
  for (const port of ports) {
    while (true) {
      const info = await run("redis-cli", [...cliArgs(settings), "-p", String(port), "CLUSTER", "INFO"]).catch(() => "")
      if (info.includes("cluster_state:ok")) break
      if (Date.now() > deadline) throw new Error(`cluster node ${port} never reached cluster_state:ok`)
      await sleep(100)
    }
  }
}

/** Waits until every master of `ports` has a replica with all it wrote (20 s at most). */
const replicasCaughtUp = async (settings: Settings, ports: ReadonlyArray<number>): Promise<void> => {
  const deadline = Date.now() + 20_000
  for (const port of ports) {
    while (true) {
      const info = await run("redis-cli", [...cliArgs(settings), "-p", String(port), "INFO", "replication"]).catch(() => "")
      if (!info.includes("role:master")) break
      const offset = /master_repl_offset:(\d+)/.exec(info)?.[1]
      const acked = [...info.matchAll(/slave\d+:.*?state=online,offset=(\d+)/g)].map((m) => m[1])
      if (offset !== undefined && acked.includes(offset)) break
      if (Date.now() > deadline) throw new Error(`cluster master ${port} has no replica that caught up:\n${info}`)
      await sleep(50)
    }
  }
}

/** Starts the cluster, ready (`cluster_state:ok` on every node, replicas in sync) when this succeeds. */
export const makeRedisCluster = (options: ClusterOptions = {}): Effect.Effect<RedisCluster, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elc-cluster-"))
      const settings: Settings = { ...options, dir }
      const tls = options.tls === true || options.tls === "mutual"
      if (tls) await makeCertificates(dir)
      const count = options.replicas === true ? 6 : 3
      const started: Array<Node> = await Promise.all(Array.from({ length: count }, () => startNode(settings)))
      const alive = started.map(() => true)
      const running = () => started.flatMap((node, i) => alive[i] ? [node.port] : [])
      const nodes = started.map((node) => `127.0.0.1:${node.port}`)
      try {
        // With replicas, redis-cli makes the first three nodes the masters.
        const replicas = options.replicas === true ? "1" : "0"
        await run("redis-cli", [...cliArgs(settings), "--cluster", "create", ...nodes, "--cluster-replicas", replicas, "--cluster-yes"])
        await clusterOk(settings, running())
        if (options.replicas === true) await replicasCaughtUp(settings, running())
      } catch (error) {
        await Promise.all(started.map((node) => kill(node.child)))
        throw error
      }
      const cluster: RedisCluster = {
        nodes,
        kill: (i) =>
          Effect.promise(async () => {
            alive[i] = false
            await kill(started[i]!.child)
          }),
        restart: (i) =>
          Effect.promise(async () => {
            started[i] = await startNode(settings, started[i]!.port)
            alive[i] = true
            await clusterOk(settings, running())
          }),
        settled: Effect.promise(() => clusterOk(settings, running())),
        replicated: Effect.promise(() => replicasCaughtUp(settings, running())),
        ca: tls ? fs.readFileSync(path.join(dir, "ca.crt"), "utf8") : undefined,
        client: options.tls === "mutual"
          ? {
            cert: fs.readFileSync(path.join(dir, "client.crt"), "utf8"),
            key: fs.readFileSync(path.join(dir, "client.key"), "utf8")
          }
          : undefined
      }
      return { cluster, started, dir }
    }),
    ({ dir, started }) =>
      Effect.promise(async () => {
        await Promise.all(started.map((node) => kill(node.child)))
        fs.rmSync(dir, { recursive: true, force: true })
      })
  ).pipe(Effect.map(({ cluster }) => cluster))

/** A 3-master cluster without persistence. */
export const redisCluster: Effect.Effect<RedisCluster, never, Scope.Scope> = makeRedisCluster()
