-- ARGV: prefix, id, owner, prio, front(0/1), check_caps(0/1), max_user, max_total, payload, hint, now
-- returns {'ok', position} | {'full', 'user'|'total', count} | {'dup', status}
local id, owner, prio = ARGV[2], ARGV[3], ARGV[4]
local jk = P .. 'job:' .. id
local st = redis.call('HGET', jk, 'status')
if st then return {'dup', st} end
if ARGV[6] == '1' then
  local mine = num(redis.call('HGET', P .. 'active', owner))
  if mine >= num(ARGV[7]) then return {'full', 'user', mine} end
  local total = num(redis.call('HGET', P .. 'meta', 'total'))
  if total >= num(ARGV[8]) then return {'full', 'total', total} end
end
redis.call('HINCRBY', P .. 'active', owner, 1)
redis.call('HINCRBY', P .. 'meta', 'total', 1)
redis.call('HSET', jk, 'owner', owner, 'prio', prio, 'payload', ARGV[9], 'hint', ARGV[10], 'attempts', 0,
           'cancel', 0, 'created', ARGV[11])
local member = place(id, ARGV[5] == '1')
local pos = position(member)
event(id, 'kind', 'queued', 'position', pos, 'at', ARGV[11])
return {'ok', pos}
