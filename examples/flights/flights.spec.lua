-- The delayed-flights pipeline: average arrival delay and number of delayed
-- flights per carrier, on the Data Expo 2009 airline on-time schema.
--   securestreams gen flights --rows 1000000 > flights.csv
--   securestreams run examples/flights/flights.spec.lua --input flights.csv
return {
  name = "delayed-flights",
  source = { file = "flights.csv", header = true },  -- relative to this file; --input overrides
  stages = {
    { name = "mapper",  script = "mapper.lua",  workers = 2 },
    { name = "filter",  script = "filter.lua",  workers = 2 },
    { name = "reducer", script = "reducer.lua", workers = 2 },
  },
  sink = { script = "printer.lua" },
  security = "plain",
  on_error = "skip",
}
