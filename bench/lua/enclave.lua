-- bench/lua/enclave.lua - run one of the Lua benchmarks inside an enclave:
--
--   SS_KEY_FILE=KEY SS_ENCLAVE=isolated SS_ENCLAVE_BUDGET=3600s SS_ENCLAVE_HEAP=512M \
--       securestreams lua bench/lua/enclave.lua NAME N
--
-- The benchmark's file (bench/lua/NAME.lua, the very code `securestreams lua
-- bench/lua/NAME.lua N` runs natively) becomes the body of a stage:
--   local bench = (function(...) <NAME.lua> end)()
--   return function(stream)
--     return stream:map(function(n) if n == 0 then return 'ready' end return bench(n) end)
--   end
-- run with sgx.sgxprocess on a sealed batch of one event. The first call (event
-- 0) starts the enclave (fork, exec, fixed heap allocated and touched,
-- lockdown, code compiled); the second (event N) runs the benchmark. Prints
-- the benchmark's result like the native run, and on stderr one line
--   enclave startup S run S cpu S hwm KIB backend B
-- with the wall-clock seconds of both calls, the CPU seconds of the second
-- (the enclave child's, from /proc/PID/schedstat; inprocess: this process's)
-- and the enclave child's peak resident memory (VmHWM; isolated only: the
-- fixed heap is touched up front, so it is at least the heap). Without SS_ENCLAVE the same code runs in the
-- inprocess backend (the mock: same restricted VM, same budget, no child).
local sgx = require 'sgx'
local net = require 'securestreams.net'

local name, n = arg[1], math.tointeger(tonumber(arg[2] or ''))
assert(name and n and n > 0, 'usage: enclave.lua NAME N')
local dir = (arg[0]:match('^(.*)/[^/]*$') or '.') .. '/'
local f = assert(io.open(dir .. name .. '.lua'))
local src = f:read('a')
f:close()
local code = 'local bench = (function(...)\n' .. src .. '\nend)()\n' ..
  'return function(stream)\n' ..
  '  return stream:map(function(n) if n == 0 then return "ready" end return bench(n) end)\n' ..
  'end\n'

local function call(x)
  local result, r = sgx.sgxprocess(code, sgx.sgxencrypt({ x }))
  local events = sgx.sgxdecrypt(result)
  if events[1] == nil then
    error(('%s %d in the enclave produced nothing: %s'):format(name, x, r.message), 0)
  end
  return events[1]
end

local function slurp(path)
  local h = io.open(path)
  if not h then return nil end
  local s = h:read('a')
  h:close()
  return s
end

-- the isolated enclave: our child process whose command line is enclave-child
local function enclave_child()
  local pid = (slurp('/proc/self/stat') or ''):match('^(%d+)')
  if not pid then return nil end
  local tasks = io.popen('ls /proc/' .. pid .. '/task')
  for task in tasks:lines() do
    for child in (slurp('/proc/' .. pid .. '/task/' .. task .. '/children') or ''):gmatch('%d+') do
      if (slurp('/proc/' .. child .. '/cmdline') or ''):find('enclave-child', 1, true) then
        tasks:close()
        return child
      end
    end
  end
  tasks:close()
  return nil
end

-- CPU seconds of the code that runs the enclave: the child's (schedstat, in
-- ns) for the isolated backend, this process's (os.clock) for inprocess
local child
local function cpu()
  if child then
    return tonumber((slurp('/proc/' .. child .. '/schedstat') or ''):match('^(%d+)')) / 1e9
  end
  return os.clock()
end

local t0 = net.now()
assert(call(0) == 'ready')
local t1 = net.now()
if not sgx.mock then child = enclave_child() or error('the isolated enclave child was not found') end
local c0 = cpu()
local result = call(n)
local c1 = cpu()
local t2 = net.now()

-- its peak resident memory (the fixed heap is touched at start-up)
local hwm = child and tonumber((slurp('/proc/' .. child .. '/status') or ''):match('VmHWM:%s*(%d+)')) or 0

print(result)
io.stderr:write(('enclave startup %.6f run %.6f cpu %.6f hwm %d backend %s\n'):format(
  t1 - t0, t2 - t1, c1 - c0, hwm, (sgx.backend:gsub(' .*', ''))))
