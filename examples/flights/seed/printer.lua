-- Printer: merge partial results, print one line per carrier at the end.
local ZmqRx = require 'zmq-rx'

local from_socket = os.getenv('FROM') or 'tcp://localhost:5562'
local results = {}

ZmqRx.Subject.fromZmqSocket(from_socket)
  :subscribe(function(partial)
    for k, v in pairs(partial) do
      local r = results[k] or { count = 0, total = 0 }
      results[k] = { count = r.count + v.count, total = r.total + v.total }
    end
  end, function(err)
    print(err)
  end, function()
    local carriers = {}
    for k in pairs(results) do carriers[#carriers + 1] = k end
    table.sort(carriers)
    print('# carrier delayed_flights average_arrival_delay_min')
    for _, k in ipairs(carriers) do
      local v = results[k]
      print(('%s %d %.6f'):format(k, v.count, v.total / v.count))
    end
    ZmqRx.sendZmqCompleted()
  end)
