-- ARGV: prefix, lease_ms, max_attempts, now, lost_message.  Run by every process: attempts whose lease ran out
-- go back to the front of their owner's line, or fail after max_attempts (the poison guard), or end cancelled
-- when a cancel was asked. returns {requeued, failed, cancelled}
redis.pcall('XGROUP', 'CREATE', P .. 'run', 'gpu', '0', 'MKSTREAM')
local got = redis.call('XAUTOCLAIM', P .. 'run', 'gpu', 'reaper', ARGV[2], '0-0', 'COUNT', 16)
local counts = {0, 0, 0}
for _, entry in ipairs(got[2]) do
  if entry then
    local sid, id = entry[1], entry[2][2]
    local jk = P .. 'job:' .. id
    local st, s, attempts, cancel, reason = unpack(redis.call('HMGET', jk, 'status', 'sid', 'attempts', 'cancel',
                                                             'cancel_reason'))
    release(sid)
    if st == 'running' and s == sid then
      if cancel == '1' then
        conclude(id, 'cancelled', reason or 'cancelled', ARGV[4], sid)
        counts[3] = counts[3] + 1
      elseif num(attempts) >= num(ARGV[3]) then
        conclude(id, 'failed', string.format(ARGV[5], num(attempts)), ARGV[4], sid)
        counts[2] = counts[2] + 1
      else
        local pos = position(place(id, true))
        event(id, 'kind', 'queued', 'position', pos, 'message', 'its GPU worker was lost; it is first in line again',
              'requeued', 1, 'at', ARGV[4])
        counts[1] = counts[1] + 1
      end
    end
  end
end
return counts
