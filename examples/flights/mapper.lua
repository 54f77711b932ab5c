-- CSV line -> { carrier = UniqueCarrier, arrdelay = ArrDelay or nil when "NA" }
local csv = require 'csv'

return function(stream)
  return stream:map(function(line)
    local f = csv.parse(line)
    if #f ~= 29 then
      error(('expected 29 fields, got %d'):format(#f))
    end
    return { carrier = f[9], arrdelay = tonumber(f[15]) }
  end)
end
