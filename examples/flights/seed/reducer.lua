-- Reducer: delayed flights and total delay per carrier (partial results).
local ZmqRx = require 'zmq-rx'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5560'
local to_socket = os.getenv('TO') or 'tcp://localhost:5561'

ZmqRx.Subject.fromZmqSocket(from_socket)
  :reduce(function(acc, event)
    local c = acc[event.carrier] or { count = 0, total = 0 }
    acc[event.carrier] = { count = c.count + 1, total = c.total + event.arrdelay }
    return acc
  end, {})
  :subscribeToSocket(to_socket)
