import { describe } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import { budgetConformance } from "../support/budgetConformance.js"
import { bannerWithoutRedis, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"

bannerWithoutRedis("test/layers/BudgetRedis.test.ts")

describe.skipIf(skipWithoutRedis)("Redis", () => {
budgetConformance(
  "redis",
  Layer.unwrapEffect(
    Effect.sync(() => RedisTokenStore.layer({ url: redisUrl(), keyPrefix: uniqueKeyPrefix("budget") }))
  )
)
})
