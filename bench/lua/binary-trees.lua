-- binary-trees: allocate and walk many perfect binary trees (the allocator
-- and the garbage collector). securestreams lua bench/lua/binary-trees.lua N
-- Prints the classic report: a stretch tree of depth N+1, then for depths
-- 4, 6, .. N, 2^(N-d+4) trees each with their total node count, then a tree
-- kept alive all along. Used as a module (no argument) it returns run(n),
-- which returns that report as one string.

-- A tree is a table of its two subtrees; a leaf is an empty table.
local function make(depth)
  if depth == 0 then return {} end
  depth = depth - 1
  return { make(depth), make(depth) }
end

local function nodes(tree)
  local left = tree[1]
  if left == nil then return 1 end
  return 1 + nodes(left) + nodes(tree[2])
end

local function run(n)
  local mindepth = 4
  local maxdepth = n < mindepth + 2 and mindepth + 2 or n
  local out = {}
  out[#out + 1] = ('stretch tree of depth %d\t check: %d'):format(maxdepth + 1, nodes(make(maxdepth + 1)))
  local longlived = make(maxdepth)
  for depth = mindepth, maxdepth, 2 do
    local iterations = 1 << (maxdepth - depth + mindepth)
    local check = 0
    for _ = 1, iterations do check = check + nodes(make(depth)) end
    out[#out + 1] = ('%d\t trees of depth %d\t check: %d'):format(iterations, depth, check)
  end
  out[#out + 1] = ('long lived tree of depth %d\t check: %d'):format(maxdepth, nodes(longlived))
  return table.concat(out, '\n')
end

local n = ...
if n then
  local t0 = os.clock()
  local result = run(math.tointeger(tonumber(n)) or error('binary-trees: N must be an integer'))
  local cpu = os.clock() - t0
  print(result)
  -- scripts/bench-lua: the run's CPU seconds, without the interpreter's start
  if os.getenv('BENCH_CPU') then io.stderr:write(('cpu %.6f\n'):format(cpu)) end
end
return run
