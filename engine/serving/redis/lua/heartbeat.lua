-- ARGV: prefix, consumer, sid, id.  returns 0 (not ours any more: abandon), 1 (renewed), 2 (renewed; cancel it)
local id, consumer, sid = ARGV[4], ARGV[2], ARGV[3]
if not holds(id, consumer, sid) then return 0 end
-- resets the entry's idle time (the lease clock); JUSTID keeps the delivery count
redis.call('XCLAIM', P .. 'run', 'gpu', consumer, 0, sid, 'JUSTID')
if redis.call('HGET', P .. 'job:' .. id, 'cancel') == '1' then return 2 end
return 1
