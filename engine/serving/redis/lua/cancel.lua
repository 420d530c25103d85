-- ARGV: prefix, id, reason, now.  returns 'cancelled' (was queued) | 'running' (its worker will stop) | 'gone'
local id = ARGV[2]
local jk = P .. 'job:' .. id
local st, member, owner, prio, worker = unpack(redis.call('HMGET', jk, 'status', 'member', 'owner', 'prio', 'worker'))
if st == 'running' then
  redis.call('HSET', jk, 'cancel', 1, 'cancel_reason', ARGV[3])
  redis.call('PUBLISH', P .. 'ctl:' .. worker, cjson.encode({op = 'cancel', job = id, reason = ARGV[3]}))
  return 'running'
end
if st ~= 'queued' then return 'gone' end
redis.call('ZREM', P .. 'wait', member)
redis.call('ZREM', P .. 'own:' .. owner, member)
-- the owner's next job takes the turn the cancelled one held, not one after it
local base = -num(prio) * CLASS
local mine = redis.call('ZREVRANGEBYSCORE', P .. 'own:' .. owner, fmt(base + CLASS - 1), fmt(base), 'WITHSCORES',
                        'LIMIT', 0, 1)
local f = num(redis.call('HGET', P .. 'meta', 'vt:' .. prio))
if #mine > 0 then f = num(mine[2]) - base + 1 end
redis.call('HSET', P .. 'fin', prio .. ':' .. owner, fmt(f))
redis.call('HDEL', jk, 'member')
conclude(id, 'cancelled', ARGV[3], ARGV[4], nil)
return 'cancelled'
