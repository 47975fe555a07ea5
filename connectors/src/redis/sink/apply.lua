-- Applies one chunk of an epoch's operations exactly once (Weir's Redis sinks).
--
-- KEYS[1]      the fence, holding "EPOCH:N": N operations of epoch EPOCH have landed
-- KEYS[i + 1]  the key of operation i
-- ARGV[1]      the epoch being committed (decimal)
-- ARGV[2]      the index of this chunk's first operation within the epoch
-- ARGV[3..]    per operation: key type ('' = any), argument count n, command, n arguments
--
-- Returns the number of operations applied, or -1 when the fence holds a later epoch.

-- Epochs are compared as decimal strings: Lua numbers are doubles.
local function later(a, b)
  if #a ~= #b then
    return #a > #b
  end
  return a > b
end

local epoch = ARGV[1]
local first = tonumber(ARGV[2])
local done = 0
local fence = redis.call('GET', KEYS[1])
if fence then
  local fenced_epoch, fenced_ops = string.match(fence, '^(%d+):(%d+)$')
  if not fenced_epoch then
    return redis.error_reply('ERR weir: unreadable fence value in ' .. KEYS[1])
  end
  if later(fenced_epoch, epoch) then
    return -1
  end
  if fenced_epoch == epoch then
    done = tonumber(fenced_ops)
  end
end

local ops = {}
local at = 3
while at <= #ARGV do
  local argc = tonumber(ARGV[at + 1])
  ops[#ops + 1] = { want = ARGV[at], command = ARGV[at + 2], from = at + 3, to = at + 2 + argc }
  at = at + 3 + argc
end

local skip = math.max(done - first, 0)
if skip >= #ops then
  return 0
end

-- Check every key first: a script that fails half-way keeps the writes it made.
for i = skip + 1, #ops do
  local want = ops[i].want
  if want ~= '' then
    local found = redis.call('TYPE', KEYS[i + 1]).ok
    if found ~= 'none' and found ~= want then
      return redis.error_reply('WRONGTYPE weir: ' .. KEYS[i + 1] .. ' holds a ' .. found ..
        ', this sink writes a ' .. want .. ' there')
    end
  end
end

for i = skip + 1, #ops do
  local op = ops[i]
  local command = op.command
  -- HINCRBY fails on a field that an earlier float increment left fractional.
  if command == 'HINCRBY' then
    local current = redis.call('HGET', KEYS[i + 1], ARGV[op.from])
    if current and not string.find(current, '^-?%d+$') then
      command = 'HINCRBYFLOAT'
    end
  end
  redis.call(command, KEYS[i + 1], unpack(ARGV, op.from, op.to))
end

redis.call('SET', KEYS[1], epoch .. ':' .. (first + #ops))
return #ops - skip
