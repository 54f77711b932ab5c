-- Keep the delayed flights.
return function(stream)
  return stream:filter(function(event)
    return (event.arrdelay or 0) > 0
  end)
end
