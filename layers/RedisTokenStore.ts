/**
 * A `TokenStore` kept in Redis (ioredis), single node or Cluster, shared by
 * every process that uses the same Redis and key prefix.
 *
 * Key layout (`<prefix>` defaults to `token_usage`; `<base>` is
 * `<prefix>:{<user>}`, `<prefix>:team:{<team>}` or `<prefix>:org:{<org>}`):
 *
 * - `<base>:<cycle>`: a hash per subject and billing cycle with the integer
 *   fields `prompt_tokens`, `completion_tokens`, `total_tokens`, `cost_micros`
 *   (when a cost was recorded), `usage_limit` (when a limit is set) and
 *   `held_tokens` (held by admitted calls, see `TokenStore.reserve`);
 * - `<base>:m` and `<base>:m:<period>:<bucket>`: the idempotency markers of
 *   recorded calls, a 22-character digest of each call id in small hashes,
 *   kept at least the idempotency TTL (default 24 hours) and at most a quarter
 *   of it more (about 37 bytes a call, up to 74 for subjects with few calls;
 *   see the marker layout in the code);
 *   `<base>:call:<callId>`, the marker key of earlier versions, is still read;
 * - `<base>:<cycle>:holds` and `<base>:<cycle>:held`: the holds of admitted
 *   calls (a sorted set by expiry, and their sizes);
 * - `<base>:rate:<minute>`: a rate window's request and token counts.
 *
 * This is the Python design's `token_usage:<user>:<cycle>` with the id in a
 * hash tag `{...}`: every key of one subject lives in one Redis Cluster slot,
 * so each script touches one slot per subject. Ids are percent-encoded where
 * they contain `%`, `:`, `{`, `}`, whitespace or control characters (other
 * characters, unicode included, are kept), so that the encoding is injective
 * and keys never collide (`a:b` vs `a`, `{x}` vs `x`). The prefix may not
 * contain `{` or `}`.
 *
 * Records are written by one Lua script: for each record and level, if the
 * call's marker exists it is a duplicate, else the counters are incremented
 * and the marker added, atomically, and the call's hold ends; a stored counter
 * that is not an integer, or an increment that would pass 2^53 - 1, fails the
 * record with nothing written. A retry after a lost reply therefore counts
 * once. Records (and reservations) issued in the same event-loop turn share
 * one script call (up to `batchSize`, default 256; per slot group on a
 * Cluster); each keeps its own outcome.
 *
 * On a Cluster (`makeCluster`, `layerCluster`, or `fromClient` with an ioredis
 * `Cluster`) the levels of one call are in different slots: a record writes
 * its user level first, then the others; a reservation holds one slot group
 * after the other and releases those held when a later one refuses. The
 * scripts are kept out of ioredis' auto-pipelining (it routes a script by its
 * first argument, the number of keys, and would mix slots in one pipeline).
 * `users` scans every master.
 *
 * Every command is bounded: ioredis' `commandTimeout` limits the wait for a
 * reply, the offline queue is disabled so a command sent while Redis is
 * unreachable fails at once, one in flight when the connection drops is sent
 * again once it is back (a blip is not seen), and ioredis reconnects in the
 * background. Failures
 * surface as `TokenStoreError` with reason `Timeout` (no reply in time),
 * `Unavailable` (no connection, or a refusal an operator fixes: `NOAUTH`,
 * `WRONGPASS`, `NOPERM`, `OOM`) or `Unknown`. A password missing or wrong, or a
 * certificate that cannot be verified, fails the layer at once, naming why;
 * a Redis that may evict keys (`maxmemory-policy` other than `noeviction`)
 * is warned about once connected.
 *
 * @since 0.1.0
 */
import { createHash, hash } from "node:crypto"
import * as fs from "node:fs"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Tracer from "effect/Tracer"
import * as DefaultServices from "effect/DefaultServices"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { Cluster, Redis, ReplyError } from "ioredis"
import type * as Tls from "node:tls"
import * as TokenStore from "../src/TokenStore.js"

/**
 * Options of the Redis token store.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `redis://` or `rediss://` URL; default `redis://127.0.0.1:6379`. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** Prefix of every key; default `token_usage`. */
  readonly keyPrefix?: string | undefined
  /** Longest wait for a reply to a command; default 2 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** Longest wait for a connection to be established; default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /**
   * How long a recorded call id is remembered for idempotency (the dedupe window; also
   * `REDIS_IDEMPOTENCY_TTL`); default 24 hours. A marker is kept at least this long, at most a
   * quarter of it more.
   */
  readonly idempotencyTtl?: Duration.DurationInput | undefined
  /** Longest wait for a graceful `QUIT` when the layer closes; default 2 seconds. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /**
   * Send the commands issued in one event-loop turn as one pipeline (ioredis
   * auto-pipelining); default true. Many concurrent commands then share round
   * trips over the one connection. (On a Cluster the scripts are kept out of it.)
   */
  readonly autoPipelining?: boolean | undefined
  /**
   * `"wait"` (default): the layer is built once Redis answers, retrying a
   * refused or reset connection a few times (about 3 seconds in all), and
   * fails past that. `"background"`: the layer is built at once and ioredis
   * goes on connecting in the background; until it is connected every
   * command fails `Unavailable` (with an `Outbox` in front, records are
   * queued meanwhile), so an app starts during a Redis outage.
   */
  readonly connection?: "wait" | "background" | undefined
  /**
   * Most records (or reservations) sent in one script call (default 256).
   * Those issued in the same event-loop turn are batched: across users on a
   * single node, per slot group on a Cluster.
   */
  readonly batchSize?: number | undefined
  /**
   * TLS options (Node's `tls.connect`: `ca` for a private authority,
   * `servername`, client certificates): the connection is over TLS with
   * them. A `rediss://` URL is over TLS without them (the server's
   * certificate checked against Node's authorities).
   *
   * @since 0.4.0
   */
  readonly tls?: Tls.ConnectionOptions | undefined
}

/**
 * Options of a store built over an existing client.
 *
 * @since 0.1.0
 * @category models
 */
export type ClientOptions = Pick<Options, "keyPrefix" | "idempotencyTtl" | "batchSize">

const unsafeKeyChars = /[%:{}\s\p{Cc}]/gu

/**
 * Encodes a user or call id for use inside a key: `%`, `:`, `{`, `}`,
 * whitespace and control characters are percent-encoded (UTF-8), everything
 * else is kept. Injective on well-formed strings.
 *
 * @since 0.1.0
 * @category keys
 */
export const encodeKeyPart = (s: string): string => s.replace(unsafeKeyChars, encodeURIComponent)

/**
 * The inverse of `encodeKeyPart`; none when the string is not an encoding.
 *
 * @since 0.1.0
 * @category keys
 */
export const decodeKeyPart = (s: string): Option.Option<string> => {
  try {
    const decoded = decodeURIComponent(s)
    return encodeKeyPart(decoded) === s ? Option.some(decoded) : Option.none()
  } catch {
    return Option.none()
  }
}

const levelPart: Record<TokenStore.Level, string> = { user: "", team: ":team", org: ":org" }

/**
 * The start of every key of a subject: `<prefix>:{<user>}` for a user,
 * `<prefix>:team:{<team>}` and `<prefix>:org:{<org>}` for the other levels.
 * The hash tag is the subject's id, so every key of one subject (usage, call
 * markers, holds, rate windows) is in one Redis Cluster slot.
 *
 * @since 0.2.0
 * @category keys
 */
export const subjectBase = (prefix: string, subject: TokenStore.Subject): string =>
  `${prefix}${levelPart[subject.level]}:{${encodeKeyPart(subject.id)}}`

/**
 * The key of the usage hash of a subject (a user id, or any level) and cycle.
 *
 * @since 0.1.0
 * @category keys
 */
export const usageKey = (prefix: string, owner: TokenStore.Owner, cycle: string): string =>
  `${subjectBase(prefix, TokenStore.subjectOf(owner))}:${cycle}`

/**
 * The key of the idempotency marker of a call at a subject (a user id, or
 * any level) as versions before 0.3 wrote it: still read, never written (see
 * {@link markersKey} for the markers now).
 *
 * @since 0.1.0
 * @category keys
 */
export const callKey = (prefix: string, owner: TokenStore.Owner, callId: string): string =>
  `${subjectBase(prefix, TokenStore.subjectOf(owner))}:call:${encodeKeyPart(callId)}`

/**
 * The prefix of the marker hashes of a subject (a user id, or any level):
 * `<base>:m`, the hashes being `<base>:m:<period>:<bucket>`.
 * (Scripts name it among their keys for its slot; no key has this name.)
 *
 * @since 0.3.0
 * @category keys
 */
export const markersKey = (prefix: string, owner: TokenStore.Owner): string =>
  `${subjectBase(prefix, TokenStore.subjectOf(owner))}:m`

/** A call id's marker: 132 bits of its SHA-256, base64url (22 characters), a field of a marker hash. */
const digestOf = (callId: string): string =>
  // `crypto.hash` (Node 20.12+) is the fast one-shot form.
  (typeof hash === "function" ? hash("sha256", callId, "base64url") : createHash("sha256").update(callId).digest("base64url"))
    .slice(0, 22)

const holdKeys = (usage: string): readonly [string, string] => [`${usage}:holds`, `${usage}:held`]

const escapeGlob = (s: string): string => s.replace(/[*?[\]\\]/g, "\\$&")

// Lua numbers are doubles: every count below 2^53 is exact, and so is the
// comparison of a sum with this bound (a sum past it rounds to a value past it).
const maxSafe = "9007199254740991"

// Ends the hold of a call at one subject (KEYS usage, holds, held; `member` the call id).
const releaseLua = `
local function release_hold(usage, holds, held, member)
  local h = redis.call("HGET", held, member)
  if h then
    redis.call("HDEL", held, member)
    redis.call("ZREM", holds, member)
    redis.call("HINCRBY", usage, "held_tokens", -tonumber(h))
  end
end
`

// Ends the holds that expired by \`now\` (their process died before settling).
const purgeLua = `
local function purge(usage, holds, held, now)
  local expired = redis.call("ZRANGEBYSCORE", holds, "-inf", now)
  for _, m in ipairs(expired) do
    local h = redis.call("HGET", held, m)
    if h then
      redis.call("HDEL", held, m)
      redis.call("HINCRBY", usage, "held_tokens", -tonumber(h))
    end
  end
  if #expired > 0 then redis.call("ZREMRANGEBYSCORE", holds, "-inf", now) end
end
`

// The idempotency markers of a subject. A marker is a field (the call id's
// digest: 132 bits of SHA-256, base64url) of a small hash,
// `<base>:m:<period>:<bucket>`. Periods are a quarter of the window long
// (`<period>` is their number since the epoch); a period's hashes expire a
// period and a window after it starts, so a marker lives at least the window.
// The hash `<base>:m` counts the markers of each live period (a field per
// period) and holds a period's first 16 markers itself (fields
// `<period>|<digest>`: a subject with few calls has one key); from the 17th
// on, a period's markers are in buckets, spread by linear hashing on the
// digest's first 30 bits: n markers use ceil(n / 40) buckets, one more
// split off each time the count passes a multiple of 40, so every bucket
// stays small (well under Redis' default listpack limit of 128 entries: a
// compact encoding) whatever the traffic, and a lookup reads the counts once
// and one bucket a period. A call is marked when its digest is in its bucket
// of a live period, or when its key of the layout before marker hashes
// (`<base>:call:<id>`) exists (read, never written: exact through an upgrade).
const markerLua = `
local function period_width(window)
  return math.max(1, math.floor(window / 4))
end
local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do B64[string.byte(alphabet, i)] = i - 1 end
end
local function hash_of(digest)
  local h = 0
  for i = 1, 5 do h = h * 64 + B64[string.byte(digest, i)] end
  return h
end
local function clock_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Linear hashing: the level and split pointer of n markers (ceil(n / 40) buckets, at least one).
local function layout(n)
  local buckets = math.max(1, math.ceil(n / 40))
  local level = 0
  while 2 ^ (level + 1) <= buckets do level = level + 1 end
  return level, buckets - 2 ^ level
end
local function bucket_of(n, h)
  local level, split = layout(n)
  local bucket = h % (2 ^ level)
  if bucket < split then bucket = h % (2 ^ (level + 1)) end
  return bucket
end
-- Periods and buckets are integers below 2^47: Lua prints them whole.
local function bucket_key(prefix, period, bucket)
  return prefix .. ":" .. period .. ":" .. bucket
end
-- The counts of the live periods of the subjects this script call reads (a
-- batch holds several records of one subject), by their counts' key.
local counts = {}
local function counts_of(prefix, now, window)
  local found = counts[prefix]
  if found == nil then
    local width = period_width(window)
    local live = {}
    local period = math.floor(now / width)
    while (period + 1) * width + window > now do
      live[#live + 1] = period
      period = period - 1
    end
    local values = redis.call("HMGET", prefix, unpack(live))
    found = {}
    for i = 1, #live do found[live[i]] = tonumber(values[i]) or 0 end
    counts[prefix] = found
  end
  return found
end
-- A period's first markers are fields of the counts' hash itself, named <period>|<digest>.
local inline = 16
local function marked(prefix, legacy, digest, now, window)
  if redis.call("EXISTS", legacy) == 1 then return true end
  local h = hash_of(digest)
  for period, n in pairs(counts_of(prefix, now, window)) do
    if n > 0 and n <= inline then
      if redis.call("HEXISTS", prefix, period .. "|" .. digest) == 1 then return true end
    elseif n > inline and redis.call("HEXISTS", bucket_key(prefix, period, bucket_of(n, h)), digest) == 1 then
      return true
    end
  end
  return false
end
local function mark(prefix, digest, now, window)
  local width = period_width(window)
  local period = math.floor(now / width)
  local expires = (period + 1) * width + window
  local found = counts_of(prefix, now, window)
  local before = found[period] or 0
  local n = redis.call("HINCRBY", prefix, period, 1)
  found[period] = n
  if n == 1 then
    -- A new period: the counts and markers of periods no longer live go.
    for _, field in ipairs(redis.call("HKEYS", prefix)) do
      if (tonumber(string.match(field, "^%d+")) + 1) * width + window <= now then redis.call("HDEL", prefix, field) end
    end
    redis.call("PEXPIREAT", prefix, expires)
  end
  if n <= inline then
    redis.call("HSET", prefix, period .. "|" .. digest, "")
    return
  end
  if n == inline + 1 then
    -- The period outgrows the counts' hash: its markers move to its first bucket.
    local head = period .. "|"
    local moved = {}
    local entries = { digest, "" }
    for _, field in ipairs(redis.call("HKEYS", prefix)) do
      if string.sub(field, 1, #head) == head then
        moved[#moved + 1] = field
        entries[#entries + 1] = string.sub(field, #head + 1)
        entries[#entries + 1] = ""
      end
    end
    local first = bucket_key(prefix, period, 0)
    redis.call("HSET", first, unpack(entries))
    redis.call("PEXPIREAT", first, expires)
    if #moved > 0 then redis.call("HDEL", prefix, unpack(moved)) end
    return
  end
  local key = bucket_key(prefix, period, bucket_of(n, hash_of(digest)))
  redis.call("HSET", key, digest, "")
  redis.call("PEXPIREAT", key, expires)
  local level, split = layout(before)
  local after_level, after_split = layout(n)
  if after_level ~= level or after_split ~= split then
    -- A bucket more: the one at the pointer splits, the markers whose next bit is set move to its sibling.
    local from = bucket_key(prefix, period, split)
    local sibling = split + 2 ^ level
    local to = bucket_key(prefix, period, sibling)
    local moved = {}
    local entries = {}
    for _, field in ipairs(redis.call("HKEYS", from)) do
      if hash_of(field) % (2 ^ (level + 1)) == sibling then
        moved[#moved + 1] = field
        entries[#entries + 1] = field
        entries[#entries + 1] = ""
      end
    end
    if #moved > 0 then
      redis.call("HSET", to, unpack(entries))
      redis.call("HDEL", from, unpack(moved))
      redis.call("PEXPIREAT", to, expires)
    end
  end
end
`

// The hash fields of the counters, in the order of `TokenStore.counters`.
const counterFields = TokenStore.counterFields

const luaFields = `{ ${counterFields.map((field) => `"${field}"`).join(", ")} }`

// Records, each at one or more subjects ("units"): KEYS are 5 per unit (usage
// hash, legacy marker, holds, held, marker prefix); ARGV[1] is the
// idempotency window (ms), ARGV[2] the number of records, then per record:
// its number of units, call id, the call id's digest and its number, and one
// increment per counter field (FIELDS, in order). Time is Redis' (`TIME`), the
// clock that expires the markers. Every unit of a record is
// checked before anything is written: a stored counter that is not an integer
// (-1) or an increment that would take a counter past 2^53 - 1 (-2) fails the
// record with nothing written, so counters move together or not at all.
// Otherwise each unit whose marker is absent is incremented and marked (the
// Python design's three fields always, the others when not 0), and every
// unit's hold of the call ends; the answer is 1 (recorded) or 0 (the first
// unit's marker was present: duplicate).
const recordScript = `${releaseLua}${markerLua}
local FIELDS = ${luaFields}
local window = tonumber(ARGV[1])
local now = clock_ms()
local out = {}
local k = 1
local a = 3
for r = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[a])
  local member = ARGV[a + 1]
  local digest = ARGV[a + 2]
  local inc = {}
  for j = 1, #FIELDS do inc[j] = tonumber(ARGV[a + 2 + j]) end
  a = a + 3 + #FIELDS
  local status = 1
  local fresh = {}
  for u = 0, n - 1 do
    fresh[u] = not marked(KEYS[k + 5 * u + 4], KEYS[k + 5 * u + 1], digest, now, window)
    if fresh[u] then
      local current = redis.call("HMGET", KEYS[k + 5 * u], unpack(FIELDS))
      for j = 1, #FIELDS do
        local v = current[j]
        if v and not string.match(v, "^%-?%d+$") then
          status = -1
        elseif status == 1 and tonumber(v or "0") + inc[j] > ${maxSafe} then
          status = -2
        end
      end
    end
  end
  if status == 1 then
    for u = 0, n - 1 do
      local usage = KEYS[k + 5 * u]
      if fresh[u] then
        for j = 1, #FIELDS do
          if j <= 3 or inc[j] ~= 0 then redis.call("HINCRBY", usage, FIELDS[j], inc[j]) end
        end
        mark(KEYS[k + 5 * u + 4], digest, now, window)
      end
      release_hold(usage, KEYS[k + 5 * u + 2], KEYS[k + 5 * u + 3], member)
    end
    out[r] = fresh[0] and 1 or 0
  else
    out[r] = status
  end
  k = k + 5 * n
end
return out
`

// Reservations, each checked and held atomically (the script is one atomic
// step; its reservations are decided one after the other). KEYS are 6 per
// subject of each reservation (usage hash, holds, held, rate window, legacy
// marker, marker prefix); ARGV[1] is the rate-window TTL (ms), ARGV[2] the
// idempotency window (ms), ARGV[3] the number of reservations, then per
// reservation: call id, tokens, hold expiry (epoch ms), now (epoch ms),
// number of subjects, the call id's digest and its number, then requests and
// tokens per minute per subject ("" for none). Per reservation the answer is 5 numbers. Expired holds are
// purged first. A call already held or recorded answers {1} and holds nothing
// more. Then each subject is judged as the in-memory store does: over its
// limit (used + held + tokens > limit) gives {2, i, limit, used, held}, the
// tightest winning; else over a rate limit gives {3, i, kind (0 requests, 1
// tokens), limit, current}. Only when none refuses are the holds (and rate
// counts) written: {1}. A held sum that would pass 2^53 - 1 gives {-2, i}; a
// counter that is not an integer {-1, i}.
const reserveScript = `${purgeLua}${markerLua}
local window = tonumber(ARGV[2])
local function reserve_one(k, a)
  local member = ARGV[a]
  local tokens = tonumber(ARGV[a + 1])
  local now = tonumber(ARGV[a + 3])
  local n = tonumber(ARGV[a + 4])
  local digest = ARGV[a + 5]
  for i = 0, n - 1 do purge(KEYS[k + 6 * i + 1], KEYS[k + 6 * i + 2], KEYS[k + 6 * i + 3], now) end
  if redis.call("HEXISTS", KEYS[k + 3], member) == 1 or marked(KEYS[k + 6], KEYS[k + 5], digest, clock_ms(), window) then
    return {1}
  end
  local best = nil
  local room = nil
  local rate = nil
  for i = 0, n - 1 do
    local current = redis.call("HMGET", KEYS[k + 6 * i + 1], "total_tokens", "held_tokens", "usage_limit")
    for j = 1, 3 do
      if current[j] and not string.match(current[j], "^%-?%d+$") then return {-1, i} end
    end
    local used = tonumber(current[1] or "0")
    local held = tonumber(current[2] or "0")
    if held + tokens > ${maxSafe} then return {-2, i} end
    local limit = current[3] and tonumber(current[3])
    if limit and used + held + tokens > limit then
      if room == nil or limit - used - held < room then
        room = limit - used - held
        best = {2, i, limit, used, held}
      end
    elseif rate == nil then
      local rpm = ARGV[a + 6 + 2 * i]
      local tpm = ARGV[a + 7 + 2 * i]
      if rpm ~= "" or tpm ~= "" then
        local w = redis.call("HMGET", KEYS[k + 6 * i + 4], "requests", "tokens")
        local requests = tonumber(w[1] or "0")
        local counted = tonumber(w[2] or "0")
        if rpm ~= "" and requests + 1 > tonumber(rpm) then
          rate = {3, i, 0, tonumber(rpm), requests}
        elseif tpm ~= "" and counted + tokens > tonumber(tpm) then
          rate = {3, i, 1, tonumber(tpm), counted}
        end
      end
    end
  end
  if best then return best end
  if rate then return rate end
  for i = 0, n - 1 do
    -- A subject may hold the call for another of its users already (one
    -- call id given to two): that hold is replaced, not added to.
    local replaced = redis.call("HGET", KEYS[k + 6 * i + 3], member)
    if replaced then redis.call("HINCRBY", KEYS[k + 6 * i + 1], "held_tokens", "-" .. replaced) end
    redis.call("ZADD", KEYS[k + 6 * i + 2], ARGV[a + 2], member)
    redis.call("HSET", KEYS[k + 6 * i + 3], member, ARGV[a + 1])
    redis.call("HINCRBY", KEYS[k + 6 * i + 1], "held_tokens", ARGV[a + 1])
    if ARGV[a + 6 + 2 * i] ~= "" or ARGV[a + 7 + 2 * i] ~= "" then
      redis.call("HINCRBY", KEYS[k + 6 * i + 4], "requests", 1)
      redis.call("HINCRBY", KEYS[k + 6 * i + 4], "tokens", ARGV[a + 1])
      redis.call("PEXPIRE", KEYS[k + 6 * i + 4], ARGV[1])
    end
  end
  return {1}
end
local out = {}
local k = 0
local a = 4
for r = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[a + 4])
  local one = reserve_one(k, a)
  for j = 1, 5 do out[#out + 1] = one[j] or 0 end
  k = k + 6 * n
  a = a + 6 + 2 * n
end
return out
`

// Ends a call's holds: KEYS are 3 per subject (usage, holds, held); ARGV[1] the call id.
const releaseScript = `${releaseLua}
for i = 0, #KEYS / 3 - 1 do release_hold(KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3], ARGV[1]) end
return 1
`

// Reads a usage hash after purging its expired holds: KEYS usage, holds, held; ARGV[1] now.
const readScript = `${purgeLua}
purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
return redis.call("HMGET", KEYS[1], "usage_limit", "held_tokens", unpack(${luaFields}))
`

const commands = {
  record: "effectLlmCallbacksTokenStoreRecordV5",
  reserve: "effectLlmCallbacksTokenStoreReserveV3",
  release: "effectLlmCallbacksTokenStoreReleaseV1",
  read: "effectLlmCallbacksTokenStoreReadV2"
} as const

type Scripts = {
  readonly [K in (typeof commands)[keyof typeof commands]]: (
    numberOfKeys: number,
    ...keysAndArgs: ReadonlyArray<string | number>
  ) => Promise<ReadonlyArray<unknown>>
}

// Refusals for authentication or rights (a password rotated, an ACL changed) count as the store being
// unavailable: an operator fixes them, and what was refused meanwhile (kept by an outbox) is written then.
// So does a Redis out of memory (`maxmemory` reached, with `noeviction`): memory freed or added, the records kept
// meanwhile are written.
const unavailableReplies = /^(LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|READONLY|NOAUTH|WRONGPASS|NOPERM|OOM)\b/

/** A refusal that waiting does not cure: a password missing or wrong, a user without the rights. */
const refusal = /\b(NOAUTH|WRONGPASS|NOPERM)\b|invalid password|invalid username-password/i

const toTokenStoreError = (method: string) => (cause: unknown): TokenStore.TokenStoreError => {
  const message = cause instanceof Error ? cause.message : String(cause)
  const reason = message === "Command timed out"
    ? "Timeout"
    : cause instanceof ReplyError
    ? (unavailableReplies.test(message) ? "Unavailable" : "Unknown")
    : "Unavailable"
  return new TokenStore.TokenStoreError({ reason, message: `RedisTokenStore.${method}: ${message}`, cause })
}

const nativeTracer: Tracer.Tracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

const tryRedis = <A>(method: string, f: () => Promise<A>): Effect.Effect<A, TokenStore.TokenStoreError> => {
  const command = Effect.tryPromise({ try: f, catch: toTokenStoreError(method) })
  const traced = Effect.withSpan(command, `RedisTokenStore.${method}`, {
    kind: "client",
    attributes: { "db.system": "redis" },
    // A stack trace per command is measurable on the recording hot path.
    captureStackTrace: false
  })
  // Effect's default tracer exports nowhere: a span there is pure cost.
  return Effect.withFiberRuntime((fiber) => fiber.currentTracer === nativeTracer ? command : traced)
}

const parseCount = (method: string, field: string, value: unknown) =>
  Effect.suspend(() => {
    if (value === null || value === undefined) return Effect.succeed(Option.none<number>())
    const n = Number(value)
    return typeof value === "string" && Number.isSafeInteger(n)
      ? Effect.succeed(Option.some(n))
      : Effect.fail(
        new TokenStore.TokenStoreError({
          reason: "Unknown",
          message: `RedisTokenStore.${method}: field ${field} holds ${JSON.stringify(value)}, not an integer`
        })
      )
  })

const countOrZero = (method: string, field: string, value: unknown) =>
  Effect.map(parseCount(method, field, value), Option.getOrElse(() => 0))


const invalidOption = (name: string, message: string) => ConfigError.InvalidData([name], message)


const positiveMillis = (name: string, input: Duration.DurationInput) =>
  Effect.suspend(() => {
    const millis = Duration.toMillis(Duration.decode(input))
    return Number.isFinite(millis) && millis >= 1
      ? Effect.succeed(Math.round(millis))
      : Effect.fail(invalidOption(name, `Expected a finite duration of at least 1 millisecond`))
  })

const validatePrefix = (keyPrefix: string) =>
  keyPrefix.length > 0 && !/[{}]/.test(keyPrefix)
    ? Effect.succeed(keyPrefix)
    : Effect.fail(invalidOption("keyPrefix", `Expected a non-empty key prefix without "{" or "}"`))

/**
 * Whether a string is a Redis URL this layer accepts (`redis://` or `rediss://`).
 *
 * @since 0.1.0
 * @category guards
 */
export const isRedisUrl = (s: string): boolean => {
  try {
    const url = new URL(s)
    return (url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname.length > 0
  } catch {
    return false
  }
}

/** One level of one record: what one script unit writes. */
interface Unit {
  readonly subject: TokenStore.Subject
  readonly usage: string
  /** The marker key of the layout before marker hashes: read, never written. */
  readonly legacyMarker: string
  readonly markers: string
}

/** A record (or, on a Cluster, the units of one record in one slot) waiting for its script call. */
interface Queued {
  readonly input: TokenStore.RecordInput
  readonly units: ReadonlyArray<Unit>
  /** The slot group: the hash tag every key of the units shares (single node: one group). */
  readonly group: string
  readonly complete: (result: Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>) => void
  cancelled: boolean
}

const tagOf = (subject: TokenStore.Subject): string => encodeKeyPart(subject.id)

/**
 * Groups subjects by slot, keeping their order: on a Cluster the keys of one
 * script call must share a slot, and subjects with the same id share one
 * (their hash tag); on a single node everything is one group.
 */
const groupBySlot = <A>(
  cluster: boolean,
  items: ReadonlyArray<A>,
  subject: (a: A) => TokenStore.Subject
): ReadonlyArray<ReadonlyArray<A>> => {
  if (!cluster) return [items]
  const groups = new Map<string, Array<A>>()
  for (const item of items) {
    const tag = tagOf(subject(item))
    const group = groups.get(tag)
    if (group === undefined) groups.set(tag, [item])
    else group.push(item)
  }
  return Array.from(groups.values())
}

/** Combines the outcomes of a record's parts (Cluster): failed if any failed, else its user part's outcome. */
const combine = (
  parts: number,
  complete: (result: Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>) => void
) => {
  let waiting = parts
  let outcome: TokenStore.RecordOutcome = "recorded"
  let failure: TokenStore.TokenStoreError | undefined
  return (isUserPart: boolean) => (result: Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>) => {
    if (Either.isLeft(result)) failure ??= result.left
    else if (isUserPart) outcome = result.right
    if (--waiting === 0) complete(failure === undefined ? Either.right(outcome) : Either.left(failure))
  }
}

/**
 * Builds the store over a connected client: a single node (`Redis`) or a
 * Cluster (`Cluster`). The client's lifetime is the caller's; with `make` and
 * `makeCluster` it is the scope's.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromClient = (
  redis: Redis | Cluster,
  options?: ClientOptions
): Effect.Effect<TokenStore.Service, ConfigError.ConfigError> =>
  Effect.gen(function*() {
    const prefix = yield* validatePrefix(options?.keyPrefix ?? "token_usage")
    const ttlMillis = yield* positiveMillis("idempotencyTtl", options?.idempotencyTtl ?? Duration.hours(24))
    const batchSize = options?.batchSize ?? 256
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.fail(invalidOption("batchSize", `Expected an integer >= 1, got ${String(batchSize)}`))
    }
    const cluster = redis.isCluster
    if (cluster) {
      // ioredis' auto-pipelining routes a script call by its first argument,
      // which for a script is the number of keys, not a key: a pipeline then
      // mixes slots and fails whole (CROSSSLOT). Our scripts are kept out of
      // it; records are batched per slot group here instead.
      const ignored = redis.options.autoPipeliningIgnoredCommands ?? []
      for (const name of Object.values(commands)) if (!ignored.includes(name)) ignored.push(name)
      redis.options.autoPipeliningIgnoredCommands = ignored
    }
    redis.defineCommand(commands.record, { lua: recordScript })
    redis.defineCommand(commands.reserve, { lua: reserveScript })
    redis.defineCommand(commands.release, { lua: releaseScript })
    redis.defineCommand(commands.read, { lua: readScript })
    const script = redis as unknown as Scripts

    const unitOf = (input: TokenStore.RecordInput, subject: TokenStore.Subject): Unit => ({
      subject,
      usage: usageKey(prefix, subject, input.cycle),
      legacyMarker: callKey(prefix, subject, input.callId),
      markers: markersKey(prefix, subject)
    })

    // Records issued in the same event-loop turn go to Redis as one script
    // call per slot group (one group on a single node): ioredis' cost per
    // command is then paid once per batch. Each record keeps its own outcome;
    // a failed script call fails each of its records (their retries are idempotent).
    let queue: Array<Queued> = []
    let scheduled = false
    const send = (batch: ReadonlyArray<Queued>) => {
      const keys: Array<string> = []
      const args: Array<string | number> = [ttlMillis, batch.length]
      for (const { input, units } of batch) {
        for (const unit of units) keys.push(unit.usage, unit.legacyMarker, ...holdKeys(unit.usage), unit.markers)
        args.push(units.length, input.callId, digestOf(input.callId), ...TokenStore.incrementsOf(input))
      }
      script[commands.record](keys.length, ...keys, ...args).then(
        (outcomes) =>
          batch.forEach((item, i) => {
            const outcome = outcomes[i]
            item.complete(
              outcome === 1
                ? Either.right("recorded")
                : outcome === 0
                ? Either.right("duplicate")
                : outcome === -2
                ? Either.left(TokenStore.overflowError(item.units[0]!.subject, item.input.cycle))
                : Either.left(
                  new TokenStore.TokenStoreError({
                    reason: "Unknown",
                    message: `RedisTokenStore.record: a stored counter of ${
                      item.units.map((u) => `${u.subject.level} ${JSON.stringify(u.subject.id)}`).join(" or ")
                    } in cycle ${item.input.cycle} is not an integer; nothing was recorded`
                  })
                )
            )
          }),
        (error) => {
          const failure = Either.left(toTokenStoreError("record")(error))
          for (const item of batch) item.complete(failure)
        }
      )
    }
    const flush = () => {
      scheduled = false
      const taken = queue.length <= batchSize ? queue : queue.slice(0, batchSize)
      queue = queue.length <= batchSize ? [] : queue.slice(batchSize)
      if (queue.length > 0) schedule()
      const live = taken.filter((item) => !item.cancelled)
      if (live.length === 0) return
      if (!cluster) return send(live)
      const groups = new Map<string, Array<Queued>>()
      for (const item of live) {
        const group = groups.get(item.group)
        if (group === undefined) groups.set(item.group, [item])
        else group.push(item)
      }
      for (const group of groups.values()) send(group)
    }
    const schedule = () => {
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    }
    /** Queues one record (its parts, on a Cluster); returns the queued items, for cancellation. */
    const enqueue = (
      input: TokenStore.RecordInput,
      complete: (result: Either.Either<TokenStore.RecordOutcome, TokenStore.TokenStoreError>) => void
    ): ReadonlyArray<Queued> => {
      const units = TokenStore.subjectsOf(input).map((subject) => unitOf(input, subject))
      const groups = groupBySlot(cluster, units, (unit) => unit.subject)
      const item = (group: ReadonlyArray<Unit>, done: Queued["complete"]): Queued => ({
        input,
        units: group,
        group: tagOf(group[0]!.subject),
        complete: done,
        cancelled: false
      })
      const items: Array<Queued> = []
      const push = (queued: Queued) => {
        items.push(queued)
        queue.push(queued)
        schedule()
      }
      if (groups.length === 1) {
        push(item(groups[0]!, complete))
        return items
      }
      // On a Cluster the levels of a record are in different slots, written by
      // separate script calls: the user's first (it holds the record's
      // outcome), the others only once it is written, so a record refused for
      // its user (invalid, overflow) writes nothing at any level. Each level
      // is idempotent: a record that failed at a later level is completed by
      // its retry.
      push(item(groups[0]!, (first) => {
        if (Either.isLeft(first) || items[0]!.cancelled) return complete(first)
        const rest = combine(groups.length - 1, (others) => complete(Either.isLeft(others) ? others : first))
        for (const group of groups.slice(1)) push(item(group, rest(false)))
      }))
      return items
    }
    const recordManyBatched = (inputs: ReadonlyArray<TokenStore.RecordInput>) =>
      Effect.async<ReadonlyArray<TokenStore.RecordOutcome>, TokenStore.TokenStoreError>((resume) => {
        const outcomes: Array<TokenStore.RecordOutcome> = new Array(inputs.length)
        let waiting = inputs.length
        let failure: TokenStore.TokenStoreError | undefined
        if (waiting === 0) return resume(Effect.succeed(outcomes))
        // Every record completes on its own; the batch fails with the first failure once all are done.
        const items = inputs.flatMap((input, i) =>
          enqueue(input, (result) => {
            if (Either.isLeft(result)) failure ??= result.left
            else outcomes[i] = result.right
            if (--waiting === 0) resume(failure === undefined ? Effect.succeed(outcomes) : Effect.fail(failure))
          })
        )
        return Effect.sync(() => {
          for (const item of items) item.cancelled = true
        })
      })
    const recordBatched = (input: TokenStore.RecordInput) =>
      Effect.async<TokenStore.RecordOutcome, TokenStore.TokenStoreError>((resume) => {
        const items = enqueue(input, (result) => resume(result))
        // Interrupted before its batch was sent: it is left out. Once sent it
        // may still be recorded; a retry with the same call id counts once.
        return Effect.sync(() => {
          for (const item of items) item.cancelled = true
        })
      })

    const read = (method: string, owner: TokenStore.Owner, cycle: string) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const usage = usageKey(prefix, owner, cycle)
        return tryRedis(method, () => script[commands.read](3, usage, ...holdKeys(usage), now))
      })

    /** A reservation (of one slot group) waiting for its script call. */
    interface QueuedReservation {
      readonly input: TokenStore.ReserveInput
      readonly subjects: ReadonlyArray<TokenStore.Subject>
      readonly now: number
      readonly complete: (result: Effect.Effect<TokenStore.ReserveOutcome, TokenStore.TokenStoreError>) => void
      cancelled: boolean
    }

    const outcomeOf = (
      item: QueuedReservation,
      reply: ReadonlyArray<unknown>,
      offset: number
    ): Effect.Effect<TokenStore.ReserveOutcome, TokenStore.TokenStoreError> => {
      const [code, index, a, b, c] = reply.slice(offset, offset + 5) as ReadonlyArray<number>
      const { input, now } = item
      const subject = item.subjects[index ?? 0]!
      switch (code) {
        case 1:
          return Effect.succeed({ _tag: "Reserved" })
        case 2:
          return Effect.succeed({ _tag: "OverLimit", subject, limit: a!, used: b!, held: c!, requested: input.tokens })
        case 3:
          return Effect.succeed({
            _tag: "RateLimited",
            subject,
            kind: a === 0 ? "requests" : "tokens",
            limit: b!,
            current: c!,
            retryAfterMillis: TokenStore.rateWindowOf(now) + 60_000 - now
          })
        case -2:
          return Effect.fail(TokenStore.overflowError(subject, input.cycle, "reserve"))
        default:
          return Effect.fail(
            new TokenStore.TokenStoreError({
              reason: "Unknown",
              message: `RedisTokenStore.reserve: a stored counter of ${subject.level} ${
                JSON.stringify(subject.id)
              } in cycle ${input.cycle} is not an integer`
            })
          )
      }
    }

    // Reservations issued in the same event-loop turn share one script call
    // per slot group, as records do; each keeps its own outcome.
    let reservations: Array<QueuedReservation> = []
    let reservationsScheduled = false
    const sendReservations = (batch: ReadonlyArray<QueuedReservation>) => {
      const keys: Array<string> = []
      // A window is read during its minute only; it may go a minute later.
      const args: Array<string | number> = [120_000, ttlMillis, batch.length]
      for (const { input, now, subjects } of batch) {
        args.push(input.callId, input.tokens, now + input.holdTtlMillis, now, subjects.length, digestOf(input.callId))
        for (const subject of subjects) {
          const usage = usageKey(prefix, subject, input.cycle)
          keys.push(
            usage,
            ...holdKeys(usage),
            `${subjectBase(prefix, subject)}:rate:${TokenStore.rateWindowOf(now)}`,
            callKey(prefix, subject, input.callId),
            markersKey(prefix, subject)
          )
          const rate = input.rateLimits?.[subject.level]
          args.push(rate?.requestsPerMinute ?? "", rate?.tokensPerMinute ?? "")
        }
      }
      script[commands.reserve](keys.length, ...keys, ...args).then(
        (reply) => batch.forEach((item, i) => item.complete(outcomeOf(item, reply, 5 * i))),
        (error) => {
          const failure = Effect.fail(toTokenStoreError("reserve")(error))
          for (const item of batch) item.complete(failure)
        }
      )
    }
    const flushReservations = () => {
      reservationsScheduled = false
      const taken = reservations.length <= batchSize ? reservations : reservations.slice(0, batchSize)
      reservations = reservations.length <= batchSize ? [] : reservations.slice(batchSize)
      if (reservations.length > 0) scheduleReservations()
      const live = taken.filter((item) => !item.cancelled)
      if (live.length === 0) return
      if (!cluster) return sendReservations(live)
      const groups = new Map<string, Array<QueuedReservation>>()
      for (const item of live) {
        const tag = tagOf(item.subjects[0]!)
        const group = groups.get(tag)
        if (group === undefined) groups.set(tag, [item])
        else group.push(item)
      }
      for (const group of groups.values()) sendReservations(group)
    }
    const scheduleReservations = () => {
      if (!reservationsScheduled) {
        reservationsScheduled = true
        setImmediate(flushReservations)
      }
    }
    const reserveGroup = (
      input: TokenStore.ReserveInput,
      subjects: ReadonlyArray<TokenStore.Subject>,
      now: number
    ): Effect.Effect<TokenStore.ReserveOutcome, TokenStore.TokenStoreError> =>
      Effect.async((resume) => {
        const item: QueuedReservation = { input, subjects, now, complete: resume, cancelled: false }
        reservations.push(item)
        scheduleReservations()
        // Interrupted before it was sent: left out. Once sent it may hold; the
        // caller releases (see Budget).
        return Effect.sync(() => {
          item.cancelled = true
        })
      })

    const release = (input: TokenStore.ReleaseInput) =>
      Effect.forEach(
        groupBySlot(cluster, input.subjects, (subject) => subject),
        (subjects) => {
          const keys = subjects.flatMap((subject) => {
            const usage = usageKey(prefix, subject, input.cycle)
            return [usage, ...holdKeys(usage)]
          })
          return tryRedis("release", () => script[commands.release](keys.length, ...keys, input.callId))
        },
        { discard: true }
      )

    // On a single node the subjects are one group, reserved in one atomic
    // step. On a Cluster each slot group is reserved atomically, one after the
    // other; a refusal releases the groups already held, so no limit is ever
    // passed (a concurrent call may be refused while such a hold lasts).
    const reserve = (input: TokenStore.ReserveInput) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const groups = groupBySlot(cluster, input.subjects, (subject) => subject)
        if (groups.length === 1) return reserveGroup(input, input.subjects, now)
        const loop = (
          i: number
        ): Effect.Effect<TokenStore.ReserveOutcome, TokenStore.TokenStoreError> =>
          i === groups.length
            ? Effect.succeed({ _tag: "Reserved" })
            : Effect.flatMap(
              Effect.onError(
                reserveGroup(input, groups[i]!, now),
                () => release({ callId: input.callId, cycle: input.cycle, subjects: groups.slice(0, i).flat() }).pipe(
                  Effect.ignore
                )
              ),
              (outcome) =>
                outcome._tag === "Reserved"
                  ? loop(i + 1)
                  : Effect.as(
                    release({ callId: input.callId, cycle: input.cycle, subjects: groups.slice(0, i).flat() }),
                    outcome
                  )
            )
        return loop(0)
      })

    // Users are found by scanning for their usage hashes, on every master of a Cluster.
    const scanNode = (node: Redis, cycle: string, found: Set<string>) => {
      const head = `${prefix}:{`
      const tail = `}:${cycle}`
      const pattern = `${escapeGlob(prefix)}:{*}:${cycle}`
      const loop = (cursor: string): Effect.Effect<void, TokenStore.TokenStoreError> =>
        Effect.flatMap(
          tryRedis("users", () => node.scan(cursor, "MATCH", pattern, "COUNT", 1000)),
          ([next, keys]) => {
            for (const key of keys) {
              if (!key.startsWith(head) || !key.endsWith(tail)) continue
              const encoded = key.slice(head.length, key.length - tail.length)
              if (/[{}]/.test(encoded)) continue
              Option.map(decodeKeyPart(encoded), (user) => found.add(user))
            }
            return next === "0" ? Effect.void : loop(next)
          }
        )
      return loop("0")
    }
    const scanUsers = (cycle: string) =>
      Effect.suspend(() => {
        const found = new Set<string>()
        const nodes = redis.isCluster ? (redis as Cluster).nodes("master") : [redis as Redis]
        return Effect.forEach(nodes, (node) => scanNode(node, cycle, found), { discard: true }).pipe(
          Effect.map(() => Array.from(found).sort())
        )
      })

    return TokenStore.withValidation({
      record: recordBatched,
      recordMany: recordManyBatched,
      stats: (owner, cycle) =>
        Effect.flatMap(
          read("stats", owner, cycle),
          ([limit, held, ...counts]) =>
            Effect.zipWith(
              Effect.all({
                limit: parseCount("stats", "usage_limit", limit),
                held: countOrZero("stats", "held_tokens", held)
              }),
              Effect.forEach(counterFields, (field, c) => countOrZero("stats", field, counts[c])),
              ({ held, limit }, counts) => TokenStore.statsOf(counts, limit, held)
            )
        ),
      reset: (owner, cycle) =>
        Effect.asVoid(tryRedis("reset", () => redis.hdel(usageKey(prefix, owner, cycle), ...counterFields))),
      setLimit: (owner, cycle, limit) =>
        Effect.asVoid(tryRedis("setLimit", () => redis.hset(usageKey(prefix, owner, cycle), "usage_limit", limit))),
      checkLimit: (owner, cycle) =>
        Effect.flatMap(read("checkLimit", owner, cycle), ([limit, held, , , total]) =>
          Effect.all([
            countOrZero("checkLimit", "total_tokens", total),
            parseCount("checkLimit", "usage_limit", limit),
            countOrZero("checkLimit", "held_tokens", held)
          ]).pipe(Effect.map(([total, limit, held]) => TokenStore.makeLimitCheck(total, limit, held)))),
      users: scanUsers,
      reserve,
      release,
      idempotencyWindowMillis: ttlMillis
    })
  })

/** A bounded `QUIT`, then a disconnect whatever happened. */
const close = (client: Redis | Cluster, timeout: Duration.DurationInput): Effect.Effect<void> =>
  tryRedis("close", () => client.quit()).pipe(
    Effect.timeout(timeout),
    Effect.ignore,
    Effect.ensuring(Effect.sync(() => client.disconnect()))
  )

/**
 * Connects to Redis and builds the store; the connection is closed (a bounded
 * `QUIT`, then a disconnect) when the scope closes. Fails with a `ConfigError`
 * naming a bad option, or a `TokenStoreError` when Redis cannot be reached.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options?: Options
): Effect.Effect<TokenStore.Service, ConfigError.ConfigError | TokenStore.TokenStoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const url = options?.url === undefined
      ? "redis://127.0.0.1:6379"
      : Redacted.isRedacted(options.url)
      ? Redacted.value(options.url)
      : options.url
    if (!isRedisUrl(url)) {
      // The URL may hold a password: it is not repeated in the message.
      return yield* Effect.fail(invalidOption("url", "Expected a redis:// or rediss:// URL with a host"))
    }
    const commandTimeout = yield* positiveMillis("commandTimeout", options?.commandTimeout ?? Duration.seconds(2))
    const connectTimeout = yield* positiveMillis("connectTimeout", options?.connectTimeout ?? Duration.seconds(5))
    const shutdownTimeout = options?.shutdownTimeout ?? Duration.seconds(2)
    const runtime = yield* Effect.runtime<never>()
    const logError = Runtime.runFork(runtime)

    const redis = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const redis = new Redis(url, {
          ...(options?.tls === undefined ? {} : { tls: options.tls }),
          lazyConnect: true,
          commandTimeout,
          connectTimeout,
          // A command sent while disconnected fails at once instead of waiting
          // in a queue; one sent just before a disconnect is resent once after
          // the reconnect (records and reservations are idempotent per call id),
          // also when its caller was already told it timed out: a budget's
          // admission releases such a reservation, again until the store takes
          // the release (see `Budget`), which then comes after the resent one.
          enableOfflineQueue: false,
          enableAutoPipelining: options?.autoPipelining ?? true,
          maxRetriesPerRequest: 1,
          // Reconnect for ever, backing off up to one second.
          retryStrategy: (attempt) => Math.min(attempt * 100, 1000)
        })
        return redis
      }),
      (redis) => close(redis, shutdownTimeout)
    )
    const watch = watchConnection(redis, logError, "RedisTokenStore")
    yield* connectWith(redis, options?.connection, watch)
    const store = yield* fromClient(redis, options)
    yield* checkEviction(redis, options?.connection, logError, "RedisTokenStore")
    return store
  })

/** What a client's connection errors said since it was last ready (see `watchConnection`). */
interface ConnectionWatch {
  /** The last error that waiting does not cure (see `lasting`), else the last error; with its node on a Cluster. */
  readonly lastError: () => string | undefined
  /** Whether there was one that waiting does not cure. */
  readonly lastLasts: () => boolean
}

/**
 * A connection error that waiting does not cure: a refusal (a password
 * missing or wrong, a user without the rights) or a server certificate that
 * cannot be verified.
 */
const lasting = (error: Error): boolean =>
  refusal.test(error.message) ||
  /certificate|SELF_SIGNED|CERT_|ERR_TLS/i.test(`${(error as { readonly code?: unknown }).code ?? ""} ${error.message}`)

/**
 * Logs a client's connection errors: at debug level, as ioredis reconnects
 * on its own, except one that waiting does not cure (see `lasting`): a
 * warning, once until the client is ready again. A Cluster's nodes report
 * theirs as `node error`.
 */
const watchConnection = (
  client: Redis | Cluster,
  log: (effect: Effect.Effect<void>) => unknown,
  name: string
): ConnectionWatch => {
  let lastError: string | undefined
  let lastLasting: string | undefined
  const onError = (error: Error, node?: string) => {
    const message = node === undefined ? error.message : `${node}: ${error.message}`
    lastError = message
    if (!lasting(error)) return void log(Effect.logDebug(`${name}: connection error`, message))
    const first = lastLasting === undefined
    lastLasting = message
    if (first) log(Effect.logWarning(`${name}: cannot connect to Redis (${message}); every command fails until this is fixed`))
  }
  client.on("error", (error: Error) => onError(error))
  if (client.isCluster) client.on("node error", (error: Error, node: string) => onError(error, node))
  client.on("ready", () => {
    lastError = undefined
    lastLasting = undefined
  })
  return { lastError: () => lastLasting ?? lastError, lastLasts: () => lastLasting !== undefined }
}

/**
 * Warns when a Redis may evict keys (`maxmemory-policy` other than
 * `noeviction`): under memory pressure it would drop usage counters, holds
 * or the markers that make records idempotent, silently. A Redis that does
 * not let us read its configuration (a managed one) is not warned about.
 */
const evictionCheck = (client: Redis | Cluster, name: string): Effect.Effect<void> =>
  Effect.forEach(
    client.isCluster ? (client as Cluster).nodes("master") : [client as Redis],
    (node) =>
      Effect.tryPromise(() => node.config("GET", "maxmemory-policy")).pipe(
        Effect.flatMap((reply) => {
          const policy = Array.isArray(reply) ? reply[1] : undefined
          if (typeof policy !== "string" || policy === "noeviction") return Effect.void
          return Effect.logWarning(
            `${name}: Redis at ${String(node.options.host)}:${String(node.options.port)} may evict keys ` +
              `(maxmemory-policy ${policy}): under memory pressure usage counters, budget holds and the markers ` +
              `that keep records from counting twice would be dropped; set maxmemory-policy noeviction`
          )
        }),
        Effect.catchAll((error) => Effect.logDebug(`${name}: cannot read maxmemory-policy`, String(error.error)))
      ),
    { discard: true }
  )

/** Checks the eviction policy once connected: now (`"wait"`), or once first ready (`"background"`). */
const checkEviction = (
  client: Redis | Cluster,
  connection: "wait" | "background" | undefined,
  log: (effect: Effect.Effect<void>) => unknown,
  name: string
): Effect.Effect<void> =>
  connection === "background"
    ? Effect.sync(() => void client.once("ready", () => log(evictionCheck(client, name))))
    : evictionCheck(client, name)

/**
 * Connects: waiting, with a bounded retry (a reset while the app starts does
 * not fail it), or in the background (see `Options.connection`). After a
 * failed first attempt ioredis reconnects by itself (its retry strategy):
 * the wait is for it to be ready, bounded in real time (network time, not
 * the app's clock). An error that waiting does not cure (a password missing
 * or wrong, a certificate that cannot be verified) fails it at once; the
 * failure says what the connection's last error was (a Cluster's own error
 * says only that no node is available).
 */
const connectWith = (
  client: Redis | Cluster,
  connection: "wait" | "background" | undefined,
  watch: ConnectionWatch,
  probe?: Effect.Effect<string | undefined>
) => {
  if (connection === "background") {
    // ioredis goes on reconnecting whether or not this first attempt succeeds.
    return Effect.sync(() => void client.connect().catch(() => undefined))
  }
  // Why it failed: a lasting error seen; else what `probe` finds (when given), else the last error seen.
  const explained = (error: TokenStore.TokenStoreError) =>
    Effect.map(
      watch.lastLasts() || probe === undefined ? Effect.succeed(undefined) : probe,
      (found) => {
        const cause = found ?? watch.lastError()
        return cause === undefined || error.message.includes(cause)
          ? error
          : new TokenStore.TokenStoreError({ ...error, message: `${error.message} (${cause})` })
      }
    )
  return tryRedis("connect", () => client.connect()).pipe(
    Effect.catchAll((error) =>
      (watch.lastLasts() ? Effect.fail(error) : Effect.mapError(ready(client, 3_000), () => error)).pipe(
        Effect.catchAll((error) => Effect.flip(explained(error)))
      )
    )
  )
}

/** Succeeds once the client is ready, fails after `millis` of real time. */
const ready = (client: Redis | Cluster, millis: number): Effect.Effect<void, "timeout"> =>
  Effect.async<void, "timeout">((resume) => {
    if (client.status === "ready") return resume(Effect.void)
    const onReady = () => {
      clearTimeout(timer)
      resume(Effect.void)
    }
    const timer = setTimeout(() => {
      client.off("ready", onReady)
      resume(Effect.fail("timeout"))
    }, millis)
    client.once("ready", onReady)
    return Effect.sync(() => {
      clearTimeout(timer)
      client.off("ready", onReady)
    })
  })

/**
 * Options of the Redis Cluster token store.
 *
 * @since 0.2.0
 * @category models
 */
export interface ClusterOptions extends Omit<Options, "url"> {
  /**
   * Some nodes of the cluster (`host:port`, `redis://host:port` or, over
   * TLS, `rediss://host:port`); the others are discovered. At least one. A
   * node URL may carry the credentials (`redis://user:password@host:port`),
   * the same for every node that has any.
   */
  readonly nodes: ReadonlyArray<string | Redacted.Redacted<string>>
  /** The password of every node (`AUTH`), instead of one in the node URLs. */
  readonly password?: string | Redacted.Redacted<string> | undefined
  /** The ACL user of every node, instead of one in the node URLs. */
  readonly username?: string | undefined
}

/** What every node of a cluster is connected with: its credentials and TLS. */
type NodeOptions = { readonly username?: string; readonly password?: string; readonly tls?: Tls.ConnectionOptions }

/** A cluster node's address, and what its URL says of the connection. */
interface ClusterNode {
  readonly host: string
  readonly port: number
  readonly tls: boolean
  readonly username: string
  readonly password: string
}

const parseNode = (node: string): ClusterNode | undefined => {
  const url = /^rediss?:\/\//.test(node) ? node : `redis://${node}`
  if (!isRedisUrl(url)) return undefined
  const parsed = new URL(url)
  const port = parsed.port === "" ? 6379 : Number(parsed.port)
  if (!Number.isInteger(port) || port <= 0 || port >= 65536) return undefined
  return {
    host: parsed.hostname,
    port,
    tls: parsed.protocol === "rediss:",
    username: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password)
  }
}

/** What a node list says of the connections, or what is wrong with it. */
const parseNodes = (
  options: ClusterOptions
): Either.Either<{
  readonly nodes: ReadonlyArray<{ readonly host: string; readonly port: number }>
  readonly redisOptions: NodeOptions
}, string> => {
  const parsed: Array<ClusterNode> = []
  for (const node of options.nodes) {
    const text = Redacted.isRedacted(node) ? Redacted.value(node) : node
    const one = typeof text === "string" ? parseNode(text) : undefined
    if (one === undefined) {
      // A node URL may hold a password: such a node is not repeated in the message.
      const shown = typeof text === "string" && !text.includes("@") ? JSON.stringify(text) : "a node (not shown: it may hold a password)"
      return Either.left(`Expected host:port, redis://host:port or rediss://host:port, got ${shown}`)
    }
    parsed.push(one)
  }
  if (parsed.length === 0) return Either.left("Expected at least one node")
  if (new Set(parsed.map((node) => node.tls)).size > 1) return Either.left("Expected every node over TLS (rediss://) or none")
  const withCredentials = parsed.filter((node) => node.username !== "" || node.password !== "")
  if (new Set(withCredentials.map((node) => `${node.username}\u0000${node.password}`)).size > 1) {
    return Either.left("Expected the same credentials in every node URL that has any")
  }
  const password = options.password === undefined
    ? withCredentials[0]?.password ?? ""
    : Redacted.isRedacted(options.password)
    ? Redacted.value(options.password)
    : options.password
  const username = options.username ?? withCredentials[0]?.username ?? ""
  return Either.right({
    nodes: parsed.map(({ host, port }) => ({ host, port })),
    redisOptions: {
      ...(username === "" ? {} : { username }),
      ...(password === "" ? {} : { password }),
      ...(options.tls !== undefined ? { tls: options.tls } : parsed[0]!.tls ? { tls: {} } : {})
    }
  })
}

/**
 * Connects to a Redis Cluster (ioredis `Cluster`) and builds the store; the
 * connections are closed when the scope closes. Every script call touches the
 * keys of one slot only (see the module docs): records are batched per slot
 * group, reservations and releases are sent per slot group, and `users`
 * scans every master. Fails with a `ConfigError` naming a bad option, or a
 * `TokenStoreError` when the cluster cannot be reached.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeCluster = (
  options: ClusterOptions
): Effect.Effect<TokenStore.Service, ConfigError.ConfigError | TokenStore.TokenStoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const { nodes, redisOptions } = yield* Either.mapLeft(parseNodes(options), (message) => invalidOption("nodes", message))
    const commandTimeout = yield* positiveMillis("commandTimeout", options.commandTimeout ?? Duration.seconds(2))
    const connectTimeout = yield* positiveMillis("connectTimeout", options.connectTimeout ?? Duration.seconds(5))
    const shutdownTimeout = options.shutdownTimeout ?? Duration.seconds(2)
    const runtime = yield* Effect.runtime<never>()
    const logError = Runtime.runFork(runtime)
    const cluster = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const cluster = new Cluster([...nodes], {
          lazyConnect: true,
          enableOfflineQueue: false,
          enableAutoPipelining: options.autoPipelining ?? true,
          redisOptions: { ...redisOptions, commandTimeout, connectTimeout, maxRetriesPerRequest: 1 },
          clusterRetryStrategy: (attempt) => Math.min(attempt * 100, 1000)
        })
        return cluster
      }),
      (cluster) => close(cluster, shutdownTimeout)
    )
    const watch = watchConnection(cluster, logError, "RedisTokenStore (cluster)")
    yield* connectWith(cluster, options.connection, watch, firstNodeError(nodes[0]!, redisOptions, connectTimeout))
    const store = yield* fromClient(cluster, options)
    yield* checkEviction(cluster, options.connection, logError, "RedisTokenStore (cluster)")
    return store
  })

/**
 * Why a cluster's node cannot be reached, when the cluster's connection does
 * not say (ioredis asks for the slots on a connection whose errors it drops:
 * a certificate that cannot be verified shows as "None of startup nodes is
 * available"): one plain connection to it, its first error.
 */
const firstNodeError = (
  node: { readonly host: string; readonly port: number },
  redisOptions: NodeOptions,
  connectTimeout: number
): Effect.Effect<string | undefined> =>
  Effect.async<string | undefined>((resume) => {
    let answered = false
    const answer = (cause: string | undefined) => {
      if (answered) return
      answered = true
      redis.disconnect()
      resume(Effect.succeed(cause))
    }
    const redis = new Redis({
      ...redisOptions,
      host: node.host,
      port: node.port,
      lazyConnect: true,
      connectTimeout,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null
    })
    redis.on("error", (error: Error) => answer(`${node.host}:${node.port}: ${error.message}`))
    redis.connect().then(() => answer(undefined), () => answer(undefined))
    return Effect.sync(() => answer(undefined))
  })

/**
 * The Redis Cluster token store as a layer.
 *
 * @example
 * ```ts
 * import * as RedisTokenStore from "effect-llm-callbacks/layers/RedisTokenStore"
 *
 * const Store = RedisTokenStore.layerCluster({ nodes: ["10.0.0.1:7000", "10.0.0.2:7000"] })
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerCluster = (
  options: ClusterOptions
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, makeCluster(options))

/**
 * The Redis token store as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options?: Options
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, make(options))

/**
 * The Redis token store over a client owned by the caller (the layer does not
 * close it), e.g. to share one connection with other code.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClient = (
  redis: Redis | Cluster,
  options?: ClientOptions
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError> =>
  Layer.effect(TokenStore.TokenStore, fromClient(redis, options))

/**
 * A PEM file named by a variable, read when the configuration is loaded: a
 * file that cannot be read fails with the variable and the path (never the
 * file's content, which may be a private key).
 */
const pemFile = (name: string): Config.Config<string | undefined> =>
  Config.string().pipe(
    Config.mapOrFail((path) => {
      try {
        return Either.right(fs.readFileSync(path, "utf8"))
      } catch (error) {
        const code = (error as { readonly code?: unknown }).code
        return Either.left(
          ConfigError.InvalidData([], `Expected a readable PEM file, got ${JSON.stringify(path)} (${String(code ?? error)})`)
        )
      }
    }),
    Config.nested(name),
    Config.option,
    Config.map(Option.getOrUndefined)
  )

/**
 * TLS from the environment: `REDIS_TLS_CA_FILE` (a private authority's
 * certificate), `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE` (a client
 * certificate and its key, both or neither), PEM files read when the
 * configuration is loaded; `undefined` when none is set. Any of them makes
 * the connections TLS. Part of `config` and `clusterConfig`.
 *
 * @since 0.4.0
 * @category config
 */
export const tlsConfig: Config.Config<Tls.ConnectionOptions | undefined> = Config.all({
  ca: pemFile("REDIS_TLS_CA_FILE"),
  cert: pemFile("REDIS_TLS_CERT_FILE"),
  key: pemFile("REDIS_TLS_KEY_FILE")
}).pipe(
  Config.mapOrFail(({ ca, cert, key }) => {
    if ((cert === undefined) !== (key === undefined)) {
      const [set, missing] = cert === undefined
        ? ["REDIS_TLS_KEY_FILE", "REDIS_TLS_CERT_FILE"]
        : ["REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"]
      return Either.left(ConfigError.InvalidData([missing], `Expected it set with ${set} (a client certificate and its key)`))
    }
    if (ca === undefined && cert === undefined) return Either.right(undefined)
    return Either.right({
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined || key === undefined ? {} : { cert, key })
    })
  })
)

/** The settings of both stores read from the environment. */
const sharedConfig = {
  keyPrefix: Config.string().pipe(
    Config.validate({
      message: `Expected a non-empty key prefix without "{" or "}"`,
      validation: (prefix) => prefix.length > 0 && !/[{}]/.test(prefix)
    }),
    Config.nested("REDIS_KEY_PREFIX"),
    Config.withDefault("token_usage")
  ),
  commandTimeout: Config.option(Config.duration("REDIS_COMMAND_TIMEOUT")).pipe(Config.map(Option.getOrUndefined)),
  idempotencyTtl: Config.option(Config.duration("REDIS_IDEMPOTENCY_TTL")).pipe(Config.map(Option.getOrUndefined)),
  tls: tlsConfig
}

/**
 * The options read from the environment: `REDIS_URL` (required, redacted,
 * `redis://` or `rediss://`), `REDIS_KEY_PREFIX` (default `token_usage`),
 * `REDIS_COMMAND_TIMEOUT` and `REDIS_IDEMPOTENCY_TTL` (durations, optional),
 * and for TLS `REDIS_TLS_CA_FILE` (a private authority's certificate),
 * `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE` (a client certificate and
 * its key), PEM files, optional (any of them makes the connection TLS).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  // Validated inside `nested` so that the error names the variable.
  url: Config.redacted().pipe(
    Config.validate({
      message: "Expected a redis:// or rediss:// URL with a host",
      validation: (url) => isRedisUrl(Redacted.value(url))
    }),
    Config.nested("REDIS_URL")
  ),
  ...sharedConfig
})

/**
 * The options of the Cluster store read from the environment:
 * `REDIS_CLUSTER_NODES` (required, redacted: some nodes, comma-separated,
 * each `host:port`, `redis://host:port` or `rediss://host:port`, credentials
 * in the URLs), and `REDIS_KEY_PREFIX`, `REDIS_COMMAND_TIMEOUT`,
 * `REDIS_IDEMPOTENCY_TTL` and the `REDIS_TLS_*_FILE` settings as for a
 * single node.
 *
 * @since 0.4.0
 * @category config
 */
export const clusterConfig: Config.Config<ClusterOptions> = Config.all({
  nodes: Config.redacted().pipe(
    Config.mapOrFail((value) => {
      const nodes = Redacted.value(value).split(",").map((node) => node.trim()).filter((node) => node !== "")
      return Either.match(parseNodes({ nodes }), {
        onLeft: (message) => Either.left(ConfigError.InvalidData([], message)),
        onRight: () => Either.right(nodes.map((node) => Redacted.make(node)))
      })
    }),
    Config.nested("REDIS_CLUSTER_NODES")
  ),
  ...sharedConfig
})

/**
 * The Redis Cluster token store with options read from `Config` (by default
 * `clusterConfig`, from the environment). A bad setting fails the layer with
 * a `ConfigError` naming it.
 *
 * @since 0.4.0
 * @category layers
 */
export const layerClusterConfig = (
  options: Config.Config.Wrap<ClusterOptions> = clusterConfig
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, Effect.flatMap(Config.unwrap(options), makeCluster))

/**
 * The Redis token store with options read from `Config` (by default `config`,
 * from the environment). A bad setting fails the layer with a `ConfigError`
 * naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<TokenStore.TokenStore, ConfigError.ConfigError | TokenStore.TokenStoreError> =>
  Layer.scoped(TokenStore.TokenStore, Effect.flatMap(Config.unwrap(options), make))
