-- CSV line -> { carrier = UniqueCarrier, arrdelay = ArrDelay or nil when "NA" }.
-- csv.fields reads only the two columns the question needs (and counts the
-- others); csv.parse(line) would build all 29 (see seed/mapper.lua).
local csv = require 'csv'

return function(stream)
  return stream:map(function(line)
    local n, carrier, arrdelay = csv.fields(line, 9, 15)
    if n ~= 29 then
      error(('expected 29 fields, got %d'):format(n))
    end
    return { carrier = carrier, arrdelay = tonumber(arrdelay) }
  end)
end
