// Every ```ts code block of README.md and docs/*.md is type-checked, as a
// user would compile it: `effect-llm-callbacks` and
// `effect-llm-callbacks/layers/*` are mapped to the sources, with the
// repository's strict compiler options. Each block is its own module; it may
// `declare` what it does not define. A block whose first line is
// `// not type-checked` is skipped (for deliberately partial snippets only).
import { assert, describe, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const samplesDir = path.join(root, ".tmp", "readme-samples")

interface Sample {
  /** The markdown file, relative to the repository. */
  readonly source: string
  /** Line of the block's first code line in the markdown file (1-based). */
  readonly line: number
  readonly code: string
}

const fence = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)[^\n]*$/

/** The ```ts / ```typescript blocks of a markdown text, with their positions. */
const extractSamples = (source: string, text: string): ReadonlyArray<Sample> => {
  const samples: Array<Sample> = []
  const lines = text.split(/\r?\n/)
  let open: { readonly marker: string; readonly lang: string; readonly start: number } | undefined
  let body: Array<string> = []
  lines.forEach((line, index) => {
    const match = fence.exec(line)
    if (open === undefined) {
      if (match !== null) {
        open = { marker: match[2]!, lang: match[3]!.toLowerCase(), start: index + 2 }
        body = []
      }
    } else if (match !== null && match[3] === "" && match[2]!.startsWith(open.marker[0]!) &&
      match[2]!.length >= open.marker.length)
    {
      if (open.lang === "ts" || open.lang === "typescript") {
        samples.push({ source, line: open.start, code: body.join("\n") })
      }
      open = undefined
    } else {
      body.push(line)
    }
  })
  return samples
}

const markdownFiles = (): ReadonlyArray<string> => {
  const docs = path.join(root, "docs")
  const inDocs = fs.existsSync(docs)
    ? fs.readdirSync(docs).filter((name) => name.endsWith(".md")).sort().map((name) => path.join("docs", name))
    : []
  return [...(fs.existsSync(path.join(root, "README.md")) ? ["README.md"] : []), ...inDocs]
}

const isOptedOut = (sample: Sample): boolean => /^\s*\/\/\s*not type-checked\b/.test(sample.code)

const sampleFileName = (sample: Sample): string =>
  `${sample.source.replace(/\.md$/, "").replace(/[^\w-]+/g, "_")}_L${sample.line}.ts`

const tsconfig = {
  extends: "../../tsconfig.json",
  compilerOptions: {
    noEmit: true,
    // Each block is a module of its own, even one without imports.
    moduleDetection: "force",
    // Blocks may declare things they never use.
    noUnusedLocals: false,
    paths: {
      "effect-llm-callbacks": ["../../src/index.ts"],
      "effect-llm-callbacks/layers/*": ["../../layers/*.ts"]
    }
  },
  include: ["*.ts"]
}

const typeCheck = () =>
  new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
    const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
    execFile(
      process.execPath,
      [tsc, "-p", path.join(samplesDir, "tsconfig.json"), "--pretty", "false"],
      { cwd: root, timeout: 170_000, encoding: "utf8", maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resolve({ code, output: `${stdout}${stderr}` })
      }
    )
  })

describe("README and docs code samples", () => {
  it("extracts ts blocks with their lines, and only those", () => {
    const text = [
      "# Title",
      "```ts",
      "const a = 1",
      "```",
      "```sh",
      "npm test",
      "```",
      "````typescript",
      "```ts",
      "nested fence",
      "```",
      "````",
      "~~~ts title=\"x\"",
      "const b = 2",
      "~~~"
    ].join("\n")
    assert.deepStrictEqual(extractSamples("X.md", text), [
      { source: "X.md", line: 3, code: "const a = 1" },
      { source: "X.md", line: 9, code: "```ts\nnested fence\n```" },
      { source: "X.md", line: 14, code: "const b = 2" }
    ])
  })

  it("every sample type-checks", async () => {
    const files = markdownFiles()
    const samples = files.flatMap((file) => extractSamples(file, fs.readFileSync(path.join(root, file), "utf8")))
    if (files.includes("README.md")) {
      // A README with code must show some TypeScript; docs/*.md are assembled into it.
      assert.isAbove(samples.length, 0, "README.md exists but neither it nor docs/*.md has a ```ts sample")
    }
    const checked = samples.filter((sample) => !isOptedOut(sample))

    fs.rmSync(samplesDir, { recursive: true, force: true })
    fs.mkdirSync(samplesDir, { recursive: true })
    fs.writeFileSync(path.join(samplesDir, "tsconfig.json"), JSON.stringify(tsconfig, null, 2))
    const byFile = new Map<string, Sample>()
    for (const sample of checked) {
      const name = sampleFileName(sample)
      byFile.set(name, sample)
      fs.writeFileSync(path.join(samplesDir, name), `${sample.code}\n`)
    }
    if (checked.length === 0) return

    const result = await typeCheck()
    // Point each error at the markdown line it comes from.
    const errors = result.output.split("\n").filter((line) => line.trim() !== "").map((line) => {
      const match = /([^/\\]+\.ts)\((\d+),(\d+)\): (.*)$/.exec(line)
      const sample = match === null ? undefined : byFile.get(match[1]!)
      return sample === undefined
        ? line
        : `${sample.source}:${sample.line + Number(match![2]) - 1}:${match![3]} ${match![4]}`
    })
    assert.strictEqual(result.code, 0, `samples that do not type-check:\n${errors.join("\n")}`)
  }, 180_000)
})
