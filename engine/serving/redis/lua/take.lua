-- ARGV: prefix, consumer, now.  returns false | {id, sid, payload, attempts}
local head = redis.call('ZRANGE', P .. 'wait', 0, 0, 'WITHSCORES')
if #head == 0 then return false end
local member, score = head[1], num(head[2])
local id = string.sub(member, 18)
local jk = P .. 'job:' .. id
local owner, prio, payload = unpack(redis.call('HMGET', jk, 'owner', 'prio', 'payload'))
redis.call('ZREM', P .. 'wait', member)
redis.call('ZREM', P .. 'own:' .. owner, member)
local vk = 'vt:' .. prio
local vt = math.max(num(redis.call('HGET', P .. 'meta', vk)), score + num(prio) * CLASS)
redis.call('HSET', P .. 'meta', vk, fmt(vt))
-- forget owners whose tags can no longer matter (their next job starts at V anyway)
local fin = redis.call('HGETALL', P .. 'fin')
local mark = prio .. ':'
for i = 1, #fin, 2 do
  if string.sub(fin[i], 1, #mark) == mark and num(fin[i + 1]) <= vt then redis.call('HDEL', P .. 'fin', fin[i]) end
end
redis.pcall('XGROUP', 'CREATE', P .. 'run', 'gpu', '0', 'MKSTREAM')
local sid = redis.call('XADD', P .. 'run', '*', 'job', id)
-- only this script writes the stream, so the next undelivered entry is the one just added
local got = redis.call('XREADGROUP', 'GROUP', 'gpu', ARGV[2], 'COUNT', 1, 'STREAMS', P .. 'run', '>')
assert(got[1][2][1][1] == sid, 'the run stream was written outside take')
local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
redis.call('HSET', jk, 'status', 'running', 'worker', ARGV[2], 'sid', sid, 'started', ARGV[3])
redis.call('HDEL', jk, 'member')
event(id, 'kind', 'started', 'position', 0, 'worker', ARGV[2], 'attempt', attempts, 'at', ARGV[3])
redis.call('PUBLISH', P .. 'changed', id)
return {id, sid, payload, attempts}
