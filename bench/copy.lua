-- bench/copy.lua - move a file's bytes into an enclave and back, one call
-- per chunk (the seed's figure 6.1), with the `sgx` module:
--
--   SS_KEY_FILE=KEY [SS_ENCLAVE=isolated] securestreams lua bench/copy.lua \
--       DATA VARIANT SHA_OUT CHUNK...
--
-- DATA: the bytes to move (scripts/bench-copy: 100 MB from /dev/urandom).
-- VARIANT: "inout": the stage is the identity, every chunk comes back;
--          "in": the stage drops every event, an empty batch comes back
--          (only the copy in, as the seed's "in" curves).
-- For each CHUNK size (bytes), in the order given: cut DATA into chunks (not
-- timed), one warm-up call, then for every chunk
--   sealed = sgx.sgxencrypt({chunk})          -- the data owner seals (host)
--   result = sgx.sgxprocess(code, sealed)     -- one call: copy in, open, run
--                                             -- the stage, seal, copy out
--   events = sgx.sgxdecrypt(result)           -- the data owner opens (host)
-- timed with a wall clock around the whole loop and around sgxprocess alone.
-- With "inout" the chunks that came back are piped to `sha256sum` once the
-- loop is done (not timed) and its digest is written to SHA_OUT.CHUNK.
-- Prints one line per chunk size: chunk calls bytes total_s process_s
local sgx = require 'sgx'
local net = require 'securestreams.net'

local data_file, variant, sha_out = arg[1], arg[2], arg[3]
assert(data_file and (variant == 'inout' or variant == 'in') and sha_out and arg[4],
  'usage: copy.lua DATA inout|in SHA_OUT CHUNK...')
local code = variant == 'inout'
  and 'return function(stream) return stream end'
  or 'return function(stream) return stream:filter(function() return false end) end'

local f = assert(io.open(data_file, 'rb'))
local data = f:read('a')
f:close()

for k = 4, #arg do
  local size = math.tointeger(tonumber(arg[k])) or error('bad chunk size ' .. arg[k])
  local chunks = {}
  for pos = 1, #data, size do chunks[#chunks + 1] = data:sub(pos, pos + size - 1) end
  -- warm-up: the first call of a code starts its enclave
  local warm = sgx.sgxdecrypt(sgx.sgxprocess(code, sgx.sgxencrypt({ chunks[1] })))
  assert(variant == 'in' or warm[1] == chunks[1], 'warm-up: the chunk came back altered')
  collectgarbage()
  local outs = {}
  local tp = 0
  local t0 = net.now()
  for i = 1, #chunks do
    local sealed = sgx.sgxencrypt({ chunks[i] })
    local t1 = net.now()
    local result = sgx.sgxprocess(code, sealed)
    tp = tp + (net.now() - t1)
    local events = sgx.sgxdecrypt(result)
    if variant == 'inout' then outs[i] = events[1] end
  end
  local total = net.now() - t0
  if variant == 'inout' then
    local p = assert(io.popen('sha256sum > ' .. sha_out .. '.' .. size, 'w'))
    for i = 1, #chunks do p:write(outs[i] or '') end
    assert(p:close())
  end
  print(('%d %d %d %.6f %.6f'):format(size, #chunks, #data, total, tp))
  io.stdout:flush()
  outs, chunks = nil, nil
  collectgarbage()
end
