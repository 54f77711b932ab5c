-- Reducer in an enclave (the seed's Listing 8.10): its state stays in the
-- enclave between batches.
local ZmqRx = require 'sgx-rx'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5560'
local to_socket = os.getenv('TO') or 'tcp://localhost:5561'

ZmqRx.Subject.fromZmqSocket(from_socket)
  :reduceSGX(function(acc, event)
    local c = acc[event.carrier] or { count = 0, total = 0 }
    acc[event.carrier] = { count = c.count + 1, total = c.total + event.arrdelay }
    return acc
  end, {})
  :subscribeToSocket(to_socket)
