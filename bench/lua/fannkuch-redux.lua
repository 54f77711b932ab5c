-- fannkuch-redux: for every permutation of 1..N, count the prefix reversals
-- ("pancake flips") until 1 comes first; report a checksum (flip counts with
-- alternating signs, in permutation order) and the largest count.
-- securestreams lua bench/lua/fannkuch-redux.lua N
-- Used as a module (no argument) it returns run(n) -> "CHECKSUM MAXFLIPS".
-- The permutations are generated in the order of the benchmarks game's
-- specification (rotations driven by a counter per position), so the checksum
-- is comparable with published values (N=7: 228 and 16).

local function flips_of(perm, work, n)
  local first = perm[1]
  if first == 1 then return 0 end
  for i = 1, n do work[i] = perm[i] end
  local count = 0
  while first ~= 1 do
    -- reverse work[1..first]
    local lo, hi = 1, first
    while lo < hi do
      work[lo], work[hi] = work[hi], work[lo]
      lo, hi = lo + 1, hi - 1
    end
    count = count + 1
    first = work[1]
  end
  return count
end

local function run(n)
  local perm, work, counter = {}, {}, {}
  for i = 1, n do perm[i] = i; counter[i] = i end
  local checksum, maxflips, index = 0, 0, 0
  while true do
    local f = flips_of(perm, work, n)
    if f > maxflips then maxflips = f end
    if index % 2 == 0 then checksum = checksum + f else checksum = checksum - f end
    index = index + 1
    -- next permutation: rotate the first r elements left by one, for the
    -- smallest r whose counter has not run out
    local r = 2
    while true do
      if r > n then return ('%d %d'):format(checksum, maxflips) end
      local head = perm[1]
      for i = 1, r - 1 do perm[i] = perm[i + 1] end
      perm[r] = head
      local c = counter[r] - 1
      if c > 0 then counter[r] = c; break end
      counter[r] = r
      r = r + 1
    end
  end
end

local n = ...
if n then
  local t0 = os.clock()
  local result = run(math.tointeger(tonumber(n)) or error('fannkuch-redux: N must be an integer'))
  local cpu = os.clock() - t0
  print(result)
  -- scripts/bench-lua: the run's CPU seconds, without the interpreter's start
  if os.getenv('BENCH_CPU') then io.stderr:write(('cpu %.6f\n'):format(cpu)) end
end
return run
