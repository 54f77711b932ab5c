-- Mapper in an enclave (the seed's Listing 8.8): only the names differ from
-- the plain version; needs SS_KEY_FILE like every encrypted component.
local ZmqRx = require 'sgx-rx'
local csv = require 'csv'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5556'
local to_socket = os.getenv('TO') or 'tcp://localhost:5557'

ZmqRx.Subject.fromZmqSocket(from_socket)
  :mapSGX(function(line)
    local f = csv.parse(line)
    if #f ~= 29 then error(('expected 29 fields, got %d'):format(#f)) end
    return { carrier = f[9], arrdelay = tonumber(f[15]) }
  end)
  :subscribeToSocket(to_socket)
