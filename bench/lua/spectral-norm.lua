-- spectral-norm: the largest singular value of the infinite matrix
-- A(i,j) = 1 / ((i+j)(i+j+1)/2 + i + 1) (0-based), truncated to N x N, by
-- 10 rounds of the power method on A'A (floating point loops over arrays).
-- securestreams lua bench/lua/spectral-norm.lua N
-- Prints the norm with 9 decimals (N=100: 1.274219991). Used as a module
-- (no argument) it returns run(n) -> that string.

-- 1-based: A(i,j) with i, j from 1
local function a(i, j)
  local ij = i + j - 1
  return 1.0 / (ij * (ij - 1) * 0.5 + i)
end

-- y = A x
local function mul_a(x, y, n)
  for i = 1, n do
    local s = 0
    for j = 1, n do s = s + a(i, j) * x[j] end
    y[i] = s
  end
end

-- y = A' x
local function mul_at(x, y, n)
  for i = 1, n do
    local s = 0
    for j = 1, n do s = s + a(j, i) * x[j] end
    y[i] = s
  end
end

-- y = A' A x, t a scratch vector
local function mul_ata(x, y, t, n)
  mul_a(x, t, n)
  mul_at(t, y, n)
end

local function run(n)
  local u, v, t = {}, {}, {}
  for i = 1, n do u[i] = 1; v[i] = 0; t[i] = 0 end
  for _ = 1, 10 do
    mul_ata(u, v, t, n)
    mul_ata(v, u, t, n)
  end
  local vbv, vv = 0, 0
  for i = 1, n do
    vbv = vbv + u[i] * v[i]
    vv = vv + v[i] * v[i]
  end
  return ('%0.9f'):format(math.sqrt(vbv / vv))
end

local n = ...
if n then
  local t0 = os.clock()
  local result = run(math.tointeger(tonumber(n)) or error('spectral-norm: N must be an integer'))
  local cpu = os.clock() - t0
  print(result)
  -- scripts/bench-lua: the run's CPU seconds, without the interpreter's start
  if os.getenv('BENCH_CPU') then io.stderr:write(('cpu %.6f\n'):format(cpu)) end
end
return run
