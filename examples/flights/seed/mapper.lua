-- Mapper: CSV line -> { carrier, arrdelay }.
local ZmqRx = require 'zmq-rx'
local csv = require 'csv'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5556'
local to_socket = os.getenv('TO') or 'tcp://localhost:5557'

ZmqRx.Subject.fromZmqSocket(from_socket)
  :map(function(line)
    local f = csv.parse(line)
    if #f ~= 29 then error(('expected 29 fields, got %d'):format(#f)) end
    return { carrier = f[9], arrdelay = tonumber(f[15]) }
  end)
  :subscribeToSocket(to_socket)
