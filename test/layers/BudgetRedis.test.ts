import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import { budgetConformance } from "../support/budgetConformance.js"
import { redisUrl, uniqueKeyPrefix } from "../support/redis.js"

budgetConformance(
  "redis",
  Layer.unwrapEffect(
    Effect.sync(() => RedisTokenStore.layer({ url: redisUrl(), keyPrefix: uniqueKeyPrefix("budget") }))
  )
)
