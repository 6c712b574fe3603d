// The published package as a user gets it: `npm pack`, install the tarball
// into a fresh project outside the repository, type-check and run a consumer
// program that imports the root and two layers, and run the executable.
//
// Offline: the tarball has no dependencies of its own and is installed with
// `--offline --legacy-peer-deps`; the peers the consumer needs are then
// linked from the repository's node_modules (Node and tsc follow the links to
// the real paths, so each package still finds its own dependencies there and
// everyone shares one copy of `effect`).
import { assert, describe, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll } from "vitest"
import { redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "./support/redis.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as {
  readonly name: string
  readonly version: string
}

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const run = (file: string, args: ReadonlyArray<string>, cwd: string) =>
  new Promise<Result>((resolve) => {
    execFile(
      file,
      args,
      { cwd, timeout: 120_000, encoding: "utf8", maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resolve({ code, stdout, stderr })
      }
    )
  })

const succeed = async (file: string, args: ReadonlyArray<string>, cwd: string): Promise<Result> => {
  const result = await run(file, args, cwd)
  if (result.code !== 0) {
    throw new Error(`${path.basename(file)} ${args.join(" ")} failed (${result.code}):\n${result.stdout}\n${result.stderr}`)
  }
  return result
}

const npm = (args: ReadonlyArray<string>, cwd: string) =>
  succeed(process.platform === "win32" ? "npm.cmd" : "npm", args, cwd)

const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")

const linkPeer = (project: string, name: string) => {
  const target = path.join(project, "node_modules", name)
  fs.mkdirSync(path.dirname(target), { recursive: true })
  fs.symlinkSync(path.join(root, "node_modules", name), target, "dir")
}

const consumerProgram = `import { Console, Effect, Layer } from "effect"
import { Callbacks, Dispatcher, TokenStore } from "effect-llm-callbacks"
import * as RedisTokenStore from "effect-llm-callbacks/layers/RedisTokenStore"
import * as TokenUsage from "effect-llm-callbacks/layers/TokenUsage"

const cycle = "2026-01-01"

// Stands for a real model call.
const callModel = Effect.succeed({ text: "Hello, Alice!", input: 12, output: 5 })

const Live = TokenUsage.layer({ cycleStartDate: cycle }).pipe(
  Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory))
)

const program = Effect.gen(function*() {
  const reply = yield* callModel.pipe(
    Callbacks.instrument({
      provider: "openai",
      model: "gpt-4o-mini",
      userId: "alice",
      messages: [{ role: "user", content: "Hello" }],
      response: (r) => ({
        content: r.text,
        usage: { promptTokens: r.input, completionTokens: r.output, totalTokens: r.input + r.output }
      })
    })
  )
  const store = yield* TokenStore.TokenStore
  const stats = yield* store.stats("alice", cycle)
  yield* Console.log(JSON.stringify({
    reply: reply.text,
    promptTokens: stats.promptTokens,
    completionTokens: stats.completionTokens,
    totalTokens: stats.totalTokens,
    redisKey: RedisTokenStore.usageKey("token_usage", "alice", cycle)
  }))
})

Effect.runPromise(program.pipe(Effect.provide(Live)))
`

const consumerTsconfig = {
  compilerOptions: {
    target: "ES2022",
    lib: ["ES2022"],
    module: "NodeNext",
    moduleResolution: "NodeNext",
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: true,
    types: [],
    outDir: "dist",
    rootDir: "src"
  },
  include: ["src"]
}

describe("the packed package", () => {
  let workDir = ""
  let tarball = ""
  let files: ReadonlyArray<string> = []
  let project = ""

  beforeAll(async () => {
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-llm-callbacks-pack-"))
    // `prepack` builds dist/ first.
    const packed = await npm(["pack", "--json", "--pack-destination", workDir], root)
    const report = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("["))) as ReadonlyArray<{
      readonly filename: string
      readonly files: ReadonlyArray<{ readonly path: string }>
    }>
    tarball = path.join(workDir, report[0]!.filename)
    files = report[0]!.files.map((file) => file.path)

    project = path.join(workDir, "consumer")
    fs.mkdirSync(path.join(project, "src"), { recursive: true })
    fs.writeFileSync(
      path.join(project, "package.json"),
      JSON.stringify({ name: "consumer", version: "1.0.0", private: true, type: "module" }, null, 2)
    )
    await npm([
      "install",
      "--offline",
      "--no-audit",
      "--no-fund",
      "--ignore-scripts",
      "--legacy-peer-deps",
      "--no-package-lock",
      tarball
    ], project)
    for (const peer of ["effect", "ioredis", "gpt-tokenizer"]) linkPeer(project, peer)
  }, 240_000)

  afterAll(() => {
    if (workDir !== "") fs.rmSync(workDir, { recursive: true, force: true })
  })

  it("ships the built modules with declarations, the executable and the sources, not the tests", () => {
    for (
      const file of [
        "package.json",
        "dist/src/index.js",
        "dist/src/index.d.ts",
        "dist/src/TokenStore.js",
        "dist/layers/RedisTokenStore.js",
        "dist/layers/RedisTokenStore.d.ts",
        "dist/layers/TokenUsage.js",
        "dist/layers/TokenUsage.d.ts",
        "dist/bin/cli.js",
        "dist/cli/Cli.js",
        "src/index.ts"
      ]
    ) {
      assert.include(files, file)
    }
    const stray = files.filter((file) => /^(test|demo|bench|\.tmp|node_modules)\/|\.test\.|^tsconfig/.test(file))
    assert.deepStrictEqual(stray, [])
  })

  it("type-checks and runs a consumer that imports the root and two layers", async () => {
    fs.writeFileSync(path.join(project, "src", "main.ts"), consumerProgram)
    fs.writeFileSync(path.join(project, "tsconfig.json"), JSON.stringify(consumerTsconfig, null, 2))
    await succeed(process.execPath, [tsc, "-p", "tsconfig.json"], project)

    const result = await succeed(process.execPath, [path.join("dist", "main.js")], project)
    assert.deepStrictEqual(JSON.parse(result.stdout.trim()), {
      reply: "Hello, Alice!",
      promptTokens: 12,
      completionTokens: 5,
      totalTokens: 17,
      redisKey: "token_usage:{alice}:2026-01-01"
    })
  })

  it("rejects a consumer that misuses the types (the declarations are really checked)", async () => {
    const broken = path.join(project, "broken")
    fs.mkdirSync(path.join(broken, "src"), { recursive: true })
    fs.writeFileSync(
      path.join(broken, "src", "main.ts"),
      `import { TokenStore } from "effect-llm-callbacks"\nexport const limit: string = TokenStore.makeLimitCheck(1, undefined as never).currentUsage\n`
    )
    fs.writeFileSync(path.join(broken, "tsconfig.json"), JSON.stringify(consumerTsconfig, null, 2))
    const result = await run(process.execPath, [tsc, "-p", "tsconfig.json", "--noEmit"], broken)
    assert.strictEqual(result.code, 2, result.stdout)
    assert.include(result.stdout, "TS2322")
  })

  it("installs the executable, which names its missing optional peers, then runs against Redis once they are installed", async () => {
    const bin = path.join(project, "node_modules", ".bin", pkg.name)
    const missing = await run(bin, ["--version"], project)
    assert.strictEqual(missing.code, 1)
    assert.include(missing.stderr, "needs the packages @effect/cli, @effect/platform, @effect/platform-node")

    for (const peer of ["@effect/cli", "@effect/platform", "@effect/platform-node"]) linkPeer(project, peer)
    const version = await run(bin, ["--version"], project)
    assert.strictEqual(version.code, 0, version.stderr)
    assert.strictEqual(version.stdout.trim(), pkg.version)
    // Without Redis (outside CI) the run against it is left out; the banner of test/cli.test.ts says why.
    if (skipWithoutRedis) return
    const usage = await run(bin, ["usage", "--redis", redisUrl(), "--key-prefix", uniqueKeyPrefix("pack"), "--json"], project)
    assert.strictEqual(usage.code, 0, usage.stderr)
    assert.deepStrictEqual(JSON.parse(usage.stdout), [])
  })
})
