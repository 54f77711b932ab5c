-- sgx-rx: the seed's enclave extension of zmq-rx (its section 8.3.3).
--
--   local ZmqRx = require 'sgx-rx'
--   ZmqRx.Subject.fromZmqSocket(FROM):mapSGX(f):subscribeToSocket(TO)
--
-- mapSGX, filterSGX and reduceSGX take the same functions as map, filter and
-- reduce, and run them in an enclave (enclave.h): this process only moves
-- sealed batches. A function is shipped to the enclave as its source text,
-- read from its script, so it may use its arguments, globals and the csv,
-- json and rx modules, but no other local of its script (that would live in
-- this untrusted process); such a function is refused with a message naming
-- the local. Every operator of a stage in an enclave must be an SGX one.
-- The enclave needs the data key: SS_KEY_FILE, as for every component of an
-- encrypted pipeline. SS_ENCLAVE chooses the backend (default isolated).
local ZmqRx = require 'zmq-rx'
local Rx = require 'rx'

local allowed_upvalues = { _ENV = true, csv = true, json = true, Rx = true, rx = true }

-- The source text of a function expression, from its script file.
local function source_of(f, op)
  local info = debug.getinfo(f, 'S')
  if info.what ~= 'Lua' or info.source:sub(1, 1) ~= '@' then
    error(op .. ': the function must be written in a script file', 3)
  end
  for i = 1, math.huge do
    local name = debug.getupvalue(f, i)
    if not name then break end
    if not allowed_upvalues[name] then
      error(('%s: the function uses the local %q of its script; a function run in the enclave ' ..
        'can use its arguments, globals and the csv, json and rx modules only'):format(op, name), 3)
    end
  end
  local lines, n = {}, 0
  for line in io.lines(info.source:sub(2)) do
    n = n + 1
    if n >= info.linedefined then lines[#lines + 1] = line end
    if n == info.lastlinedefined then break end
  end
  local text = table.concat(lines, '\n')
  local first = text:find('function', 1, true)
  local last
  for pos in text:gmatch('()end') do
    local before, after = text:sub(pos - 1, pos - 1), text:sub(pos + 3, pos + 3)
    if not before:match('[%w_]') and not after:match('[%w_]') then last = pos + 2 end
  end
  if not first or not last then
    error(op .. ': cannot find the text of the function in ' .. info.source:sub(2), 3)
  end
  return text:sub(first, last), info.source:sub(2), info.linedefined
end

-- A reduce seed as Lua source (numbers, strings, booleans and tables of them).
local function literal(v)
  local t = type(v)
  if t == 'nil' then return 'nil' end
  if t == 'number' or t == 'boolean' then return tostring(v) end
  if t == 'string' then return ('%q'):format(v) end
  if t == 'table' then
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = ('[%s] = %s'):format(literal(k), literal(x)) end
    return '{' .. table.concat(parts, ', ') .. '}'
  end
  error('reduceSGX: the seed must be made of numbers, strings, booleans and tables', 3)
end

local function sgx_op(self, op, name, f, seed)
  local root = self.root or self
  if not root.zmq_source then
    error(name .. ': the stream must come from fromZmqSocket', 3)
  end
  if self ~= root and not self.sgx_ops then
    error(name .. ': a stage run in an enclave must be made of SGX operators only', 3)
  end
  local text, file, line = source_of(f, name)
  local applied
  if op == 'reduce' then applied = self:reduce(f, seed) else applied = self[op](self, f) end
  local ops = {}
  for i, o in ipairs(self.sgx_ops or {}) do ops[i] = o end
  ops[#ops + 1] = { op = op, text = text, seed = seed, where = ('%s:%d'):format(file, line) }
  applied.sgx_ops = ops
  root.has_sgx = true
  return applied
end

function Rx.Observable:mapSGX(f) return sgx_op(self, 'map', 'mapSGX', f) end
function Rx.Observable:filterSGX(f) return sgx_op(self, 'filter', 'filterSGX', f) end
function Rx.Observable:reduceSGX(f, seed) return sgx_op(self, 'reduce', 'reduceSGX', f, seed) end

-- The stage code the enclave loads: a function(stream) made of the chain.
local function stage_code(ops)
  local out = { "local csv = require 'csv'", "local json = require 'json'",
    "local Rx = require 'rx'", 'local rx = Rx', 'return function(stream)', '  return stream' }
  for _, o in ipairs(ops) do
    if o.op == 'reduce' then
      out[#out + 1] = ('    :reduce(%s, %s) -- %s'):format(o.text, literal(o.seed), o.where)
    else
      out[#out + 1] = ('    :%s(%s) -- %s'):format(o.op, o.text, o.where)
    end
  end
  out[#out + 1] = 'end'
  return table.concat(out, '\n')
end
ZmqRx.sgx_stage_code = stage_code

local plain_subscribe = Rx.Observable.subscribeToSocket
function Rx.Observable:subscribeToSocket(addr, opts)
  local root = self.root or self
  if not root.has_sgx then return plain_subscribe(self, addr, opts) end
  if not self.sgx_ops then
    error('subscribeToSocket: a stage run in an enclave must be made of SGX operators only', 2)
  end
  ZmqRx.config.enclave = ZmqRx.config.enclave or 'isolated'
  local ok, err = pcall(ZmqRx.enclave_worker, { code = stage_code(self.sgx_ops), name = '=sgx-rx stage' },
    root.zmq_source.addr, addr, opts)
  if not ok then error(err, 0) end
end

return ZmqRx
