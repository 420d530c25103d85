-- ARGV: prefix, consumer, sid, id, message, now.  The holder puts its job back first in its owner's line (its
-- shutdown ran out of grace). returns the position, or -1 when fenced off
local id, consumer, sid = ARGV[4], ARGV[2], ARGV[3]
if not holds(id, consumer, sid) then return -1 end
release(sid)
local pos = position(place(id, true))
event(id, 'kind', 'queued', 'position', pos, 'message', ARGV[5], 'requeued', 1, 'at', ARGV[6])
return pos
