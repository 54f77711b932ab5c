-- sgx: the seed's three enclave primitives (its chapter 5).
--
--   local sgx = require 'sgx'
--   local sealed = sgx.sgxencrypt({ 'a,b', 'c,d' })        -- a sealed batch
--   local result = sgx.sgxprocess(code, sealed)             -- run code on it in an enclave
--   local events = sgx.sgxdecrypt(result)                   -- back to events
--
-- `code` is a stage: Lua source text returning function(stream) -> stream
-- (see docs/spec.md), run by an enclave on the batch's events; the result is
-- sealed again inside it. sgxencrypt and sgxdecrypt run in the calling
-- process with the data key (SS_KEY_FILE): they are for the data owner's side
-- (a source, a sink), as in the seed.
--
-- Where an enclave is configured (SS_ENCLAVE=isolated), sgxprocess uses it.
-- Where none is, sgxprocess runs the same restricted VM in this process:
-- that is a MOCK with no isolation, and sgx.mock is true and says so.
--
-- Every batch belongs to a run (docs/crypto.md): SS_RUN, else a fresh run id
-- for this process. sgxencrypt seals as the run's source (position 0), the
-- enclave of sgxprocess works at position 1, and sgxdecrypt opens a batch of
-- this run made at any position.
local net = require 'securestreams.net'
local Enclave = require 'securestreams.enclave'

local sgx = {}
local backend = os.getenv('SS_ENCLAVE')
if backend == '' or backend == '1' then backend = nil end
sgx.mock = backend == nil
sgx.backend = backend or 'inprocess (mock: no enclave configured)'

local key, producer, seq = nil, net.new_id(), 0
local run = os.getenv('SS_RUN')
if run == '' then run = nil end
local enclaves = {}

local function data_key()
  if not key then
    local path = os.getenv('SS_KEY_FILE')
    if not path or path == '' then error('sgx: no data key: set SS_KEY_FILE', 3) end
    key = net.key(path)
  end
  return key
end

local function next_seq()
  seq = seq + 1
  return seq - 1
end

function sgx.sgxencrypt(events)
  assert(type(events) == 'table', 'sgxencrypt: a table of events expected')
  data_key()
  run = run or net.new_run()
  return net.seal_batch(key, events, producer, next_seq(), { run = run, source = true })
end

function sgx.sgxdecrypt(sealed)
  assert(type(sealed) == 'string', 'sgxdecrypt: a sealed batch expected')
  local events, why = net.open_batch(data_key(), sealed)
  if not events then error('sgxdecrypt: ' .. why, 2) end
  return events
end

function sgx.sgxprocess(code, sealed)
  assert(type(code) == 'string', 'sgxprocess: stage code (Lua source text) expected')
  local enc = enclaves[code]
  if not enc then
    data_key()
    run = run or net.new_run()
    enc = Enclave.new({ backend = backend or 'inprocess', code = code, name = '=sgxprocess',
      key_file = os.getenv('SS_KEY_FILE'), stage = 'sgxprocess', producer = producer, run = run, pos = 1 })
    enclaves[code] = enc
  end
  local header, lineage, payload = net.split_batch(sealed)
  local r = enc:batch(header, lineage, payload, next_seq(), true)
  if r.rejected then error('sgxprocess: the enclave rejected the batch: ' .. r.message, 2) end
  if not r.output and enc:stateful() then r = enc:flush(next_seq()) end
  if not r.output then error('sgxprocess: the enclave returned nothing' ..
    (r.message ~= '' and (': ' .. r.message) or ''), 2) end
  return r.header .. string.pack('<I4', #r.lineage) .. r.lineage .. r.payload, r
end

return sgx
