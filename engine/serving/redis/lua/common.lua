-- Shared by every script (prepended by engine/serving/redis/scripts.py). ARGV[1] is the key prefix
-- "zvl:{<ns>}:"; every key of the queue shares its hash tag, so one script only touches one slot.
-- Scores: class offset (-priority * 2^40) + the start tag S; members "<order>:<id>", where order is
-- "1%015d"(seq) for a normal put and "0%015d"(1e15 - seq) for a front put: at equal S the front put sorts
-- first, the latest front put first -- exactly FairQueue's (-priority, S, +/-seq).
local P = ARGV[1]
local CLASS = 1099511627776
local KEEP_S = 86400

local function num(v) return tonumber(v) or 0 end
local function fmt(x) return string.format('%.0f', x) end

local function event(id, ...)
  redis.call('XADD', P .. 'ev:' .. id, 'MAXLEN', '~', 500, '*', ...)
end

local function position(member)
  local rank = redis.call('ZRANK', P .. 'wait', member)
  if rank then return rank + 1 end
  return 0
end

-- put a job (its hash holds owner and prio) into the waiting line; returns the member
local function place(id, front)
  local jk = P .. 'job:' .. id
  local owner, prio = unpack(redis.call('HMGET', jk, 'owner', 'prio'))
  local base = -num(prio) * CLASS
  local vt = num(redis.call('HGET', P .. 'meta', 'vt:' .. prio))
  local seq = redis.call('HINCRBY', P .. 'meta', 'seq', 1)
  local tag, order
  if front then  -- first of all: below every queued tag of its class, and before any arrival
    tag = vt
    local head = redis.call('ZRANGEBYSCORE', P .. 'wait', fmt(base), fmt(base + CLASS - 1), 'WITHSCORES', 'LIMIT', 0, 1)
    if #head > 0 then tag = math.min(vt, num(head[2]) - base) end
    order = '0' .. string.format('%015d', 1e15 - seq)
  else
    local fk = prio .. ':' .. owner
    tag = math.max(vt, num(redis.call('HGET', P .. 'fin', fk)))
    redis.call('HSET', P .. 'fin', fk, fmt(tag + 1))
    order = '1' .. string.format('%015d', seq)
  end
  local member = order .. ':' .. id
  local score = fmt(base + tag)
  redis.call('ZADD', P .. 'wait', score, member)
  redis.call('ZADD', P .. 'own:' .. owner, score, member)
  redis.call('HSET', jk, 'status', 'queued', 'member', member)
  redis.call('HDEL', jk, 'worker', 'sid')
  redis.call('LPUSH', P .. 'wake', id)
  redis.call('LTRIM', P .. 'wake', 0, 63)
  redis.call('PUBLISH', P .. 'changed', id)
  return member
end

-- a final status: the caps free the job, the final event is written in the same step as the status
local function conclude(id, status, err, now, sid)
  local jk = P .. 'job:' .. id
  local owner = redis.call('HGET', jk, 'owner')
  if redis.call('HINCRBY', P .. 'active', owner, -1) <= 0 then redis.call('HDEL', P .. 'active', owner) end
  redis.call('HINCRBY', P .. 'meta', 'total', -1)
  redis.call('HSET', jk, 'status', status, 'error', err, 'finished', now)
  event(id, 'kind', status, 'message', err, 'sid', sid or '', 'at', now)
  redis.call('EXPIRE', P .. 'ev:' .. id, KEEP_S)
  redis.call('EXPIRE', jk, KEEP_S)
  redis.call('PUBLISH', P .. 'changed', id)
end

-- the lease entry of a running attempt is over (finished, requeued or reaped)
local function release(sid)
  redis.call('XACK', P .. 'run', 'gpu', sid)
  redis.call('XDEL', P .. 'run', sid)
end

-- whether (consumer, sid) still holds the job: the entry id is the fencing token
local function holds(id, consumer, sid)
  local st, w, s = unpack(redis.call('HMGET', P .. 'job:' .. id, 'status', 'worker', 'sid'))
  return st == 'running' and w == consumer and s == sid
end
