//! The Lua scripts the Redis engine runs: each is atomic in Redis, which is what makes offsets
//! contiguous, presence changes single, and events ordered with publications (a script's
//! `PUBLISH` goes out in the order the scripts ran).
//!
//! Keys of one channel share the hash tag `{channel}`. Times come from Redis (`TIME`), so every
//! node agrees on them.

/// Milliseconds now, by Redis's clock, and `extend`: a key's time to live is only ever
/// lengthened (entries with different leases share one key).
const NOW: &str = "local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left >= -1 and left < ms then redis.call('PEXPIRE', key, ms) end
end
";

/// KEYS: meta, history, idempotency key. ARGV: pub/sub channel, data, candidate epoch,
/// history size, history TTL ms, idempotency key ('' for none), idempotency window ms,
/// meta TTL ms. Returns {offset, epoch, time ms, duplicate (0/1)}.
pub fn publish() -> String {
    format!(
        "{NOW}
local meta, history, idem = KEYS[1], KEYS[2], KEYS[3]
redis.call('HSETNX', meta, 'epoch', ARGV[3])
local epoch = redis.call('HGET', meta, 'epoch')
if ARGV[6] ~= '' then
  local seen = redis.call('GET', idem)
  if seen then return {{tonumber(seen), epoch, now, 1}} end
end
local offset = redis.call('HINCRBY', meta, 'top', 1)
local last = tonumber(redis.call('HGET', meta, 'time') or '0')
if now < last then now = last end
redis.call('HSET', meta, 'time', now)
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', history, 'MAXLEN', ARGV[4], '0-' .. offset, 't', now, 'd', ARGV[2])
  redis.call('PEXPIRE', history, ARGV[5])
end
if ARGV[6] ~= '' then redis.call('SET', idem, offset, 'PX', ARGV[7]) end
redis.call('PEXPIRE', meta, ARGV[8])
redis.call('PUBLISH', ARGV[1], 'P ' .. offset .. ' ' .. epoch .. ' ' .. now .. ' ' .. ARGV[2])
return {{offset, epoch, now, 0}}"
    )
}

/// KEYS: meta, history. ARGV: candidate epoch, history TTL ms, 'f' or 'r', since offset ('' for
/// none), limit, meta TTL ms. Drops the expired front of the history first. Returns {epoch,
/// top, oldest, then offset, time, data per publication}.
pub fn history() -> String {
    format!(
        "{NOW}
local meta, history = KEYS[1], KEYS[2]
if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then redis.call('PEXPIRE', meta, ARGV[6]) end
local epoch = redis.call('HGET', meta, 'epoch')
local top = tonumber(redis.call('HGET', meta, 'top') or '0')
local oldest_time = now - tonumber(ARGV[2])
while true do
  local front = redis.call('XRANGE', history, '-', '+', 'COUNT', 100)
  if #front == 0 then break end
  local keep = nil
  for _, entry in ipairs(front) do
    if tonumber(entry[2][2]) >= oldest_time then keep = entry[1] break end
  end
  if keep then
    redis.call('XTRIM', history, 'MINID', keep)
    break
  end
  local last = tonumber(string.sub(front[#front][1], 3))
  redis.call('XTRIM', history, 'MINID', '0-' .. string.format('%d', last + 1))
end
local oldest = top + 1
local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
if #head > 0 then oldest = tonumber(string.sub(head[1][1], 3)) end
local limit = tonumber(ARGV[5])
local entries = {{}}
if limit > 0 then
  if ARGV[3] == 'f' then
    local from = '-'
    if ARGV[4] ~= '' then from = '0-' .. string.format('%d', tonumber(ARGV[4]) + 1) end
    entries = redis.call('XRANGE', history, from, '+', 'COUNT', limit)
  else
    local to = '+'
    if ARGV[4] ~= '' then
      local before = tonumber(ARGV[4]) - 1
      if before < 1 then to = nil else to = '0-' .. string.format('%d', before) end
    end
    if to then entries = redis.call('XREVRANGE', history, to, '-', 'COUNT', limit) end
  end
end
local out = {{epoch, top, oldest}}
for _, entry in ipairs(entries) do
  table.insert(out, tonumber(string.sub(entry[1], 3)))
  table.insert(out, tonumber(entry[2][2]))
  table.insert(out, entry[2][4])
end
return out"
    )
}

/// KEYS: presence hash, leases zset, presence index set. ARGV: client, entry JSON, lease ms,
/// pub/sub channel, channel name, announce ('1'). Returns 1 when the client is new.
pub fn presence_join() -> String {
    format!(
        "{NOW}
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
extend(KEYS[1], 2 * tonumber(ARGV[3]))
extend(KEYS[2], 2 * tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], ARGV[5])
if added == 1 and ARGV[6] == '1' then redis.call('PUBLISH', ARGV[4], 'J ' .. ARGV[2]) end
return added"
    )
}

/// KEYS: presence hash, leases zset. ARGV: client, pub/sub channel, announce ('1'). Returns the
/// entry JSON when the client was there.
pub const PRESENCE_LEAVE: &str = "
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == '1' then redis.call('PUBLISH', ARGV[2], 'L ' .. entry) end
return entry";

/// KEYS: presence hash, leases zset. ARGV: lease ms, then clients. Returns the 1-based
/// positions (in the clients given) of those no longer present.
pub fn presence_refresh() -> String {
    format!(
        "{NOW}
local missing = {{}}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(missing, i - 1)
  end
end
extend(KEYS[1], 2 * tonumber(ARGV[1]))
extend(KEYS[2], 2 * tonumber(ARGV[1]))
return missing"
    )
}

/// KEYS: presence hash, leases zset, presence index set. ARGV: pub/sub channel, announce ('1'),
/// channel name. Removes the entries whose lease ran out; returns their JSON.
pub fn presence_expire() -> String {
    format!(
        "{NOW}
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local entries = {{}}
for _, client in ipairs(gone) do
  local entry = redis.call('HGET', KEYS[1], client)
  redis.call('HDEL', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
  if entry then
    table.insert(entries, entry)
    if ARGV[2] == '1' then redis.call('PUBLISH', ARGV[1], 'L ' .. entry) end
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return entries"
    )
}

/// KEYS: nodes zset. ARGV: node, lease ms. This node now has subscribers on the channel;
/// returns 1 when no other live node had (the channel is occupied).
pub fn node_join() -> String {
    format!(
        "{NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('ZCARD', KEYS[1])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
extend(KEYS[1], 2 * tonumber(ARGV[2]))
if before == 0 and not known then return 1 end
return 0"
    )
}

/// KEYS: nodes zset. ARGV: node. This node has no subscribers left on the channel; returns 1
/// when no live node has any (the channel is vacated).
pub fn node_leave() -> String {
    format!(
        "{NOW}
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0"
    )
}

/// KEYS: nodes zset, meta. ARGV: node, lease ms, meta TTL ms. Keeps this node's interest (and
/// the channel's position) alive.
pub fn node_refresh() -> String {
    format!(
        "{NOW}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
extend(KEYS[1], 2 * tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 0"
    )
}
