-- Merge the reducers' partial results and print one line per carrier.
return function(stream)
  local results = {}
  stream:subscribe(function(partial)
    for carrier, v in pairs(partial) do
      local r = results[carrier] or { count = 0, total = 0 }
      r.count = r.count + v.count
      r.total = r.total + v.total
      results[carrier] = r
    end
  end, function(err)
    io.stderr:write('printer: ', tostring(err), '\n')
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
end
