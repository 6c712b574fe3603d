import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    globalSetup: ["test/support/globalSetup.ts"],
    // The machines that run CI have two cores: keep parallelism modest so that
    // heavy suites (Redis fault injection, HTTP) do not starve each other.
    maxWorkers: 2,
    minWorkers: 1
  }
})
