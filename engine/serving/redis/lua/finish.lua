-- ARGV: prefix, consumer, sid, id, status, error, timings(json), now.  returns 1, or 0 when fenced off
local id, consumer, sid = ARGV[4], ARGV[2], ARGV[3]
if not holds(id, consumer, sid) then return 0 end
release(sid)
redis.call('HSET', P .. 'job:' .. id, 'timings', ARGV[7])
conclude(id, ARGV[5], ARGV[6], ARGV[8], sid)
return 1
