-- Filter: keep the delayed flights.
local ZmqRx = require 'zmq-rx'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5558'
local to_socket = os.getenv('TO') or 'tcp://localhost:5559'

ZmqRx.Subject.fromZmqSocket(from_socket)
  :filter(function(event)
    return (event.arrdelay or 0) > 0
  end)
  :subscribeToSocket(to_socket)
