-- Per carrier: number of delayed flights and total delay. With several
-- reducers each emits partial accumulators; the printer merges them.
return function(stream)
  return stream:reduce(function(acc, event)
    local c = acc[event.carrier]
    if not c then
      c = { count = 0, total = 0 }
      acc[event.carrier] = c
    end
    c.count = c.count + 1
    c.total = c.total + event.arrdelay
    return acc
  end, {})
end
