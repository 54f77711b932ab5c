-- The whole delayed-flights computation in one process (the seed's Listing
-- 8.2 style): securestreams lua examples/flights/single.lua flights.csv
local Rx = require 'rx'
local csv = require 'csv'

local input = arg[1] or 'flights.csv'
local results = {}

Rx.Subject.fromFileByLine(input)
  :skip(1)
  :map(function(line)
    local f = csv.parse(line)
    return { carrier = f[9], arrdelay = tonumber(f[15]) }
  end)
  :filter(function(event)
    return (event.arrdelay or 0) > 0
  end)
  :reduce(function(acc, event)
    local c = acc[event.carrier]
    if not c then
      c = { count = 0, total = 0 }
      acc[event.carrier] = c
    end
    c.count = c.count + 1
    c.total = c.total + event.arrdelay
    return acc
  end, {})
  :subscribe(function(acc)
    results = acc
  end, function(err)
    io.stderr:write(tostring(err), '\n')
    os.exit(1)
  end, function()
    local carriers = {}
    for k in pairs(results) do carriers[#carriers + 1] = k end
    table.sort(carriers)
    print('# carrier delayed_flights average_arrival_delay_min')
    for _, k in ipairs(carriers) do
      local v = results[k]
      print(('%s %d %.6f'):format(k, v.count, v.total / v.count))
    end
  end)
