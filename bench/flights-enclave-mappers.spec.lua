-- The delayed-flights pipeline with only the mappers in enclaves (the seed's
-- figure 6.5: "mappers SGX, other workers - 1 filter worker and 1 reduce
-- worker - do not use SGX"): run with --security encrypted --key KEY; the
-- filter and reducer workers then open and seal batches themselves.
-- Used by scripts/bench-scale.
return {
  name = "delayed-flights-enclave-mappers",
  source = { file = "../examples/flights/flights.csv", header = true },
  stages = {
    { name = "mapper",  script = "../examples/flights/mapper.lua",  workers = 1, enclave = true },
    { name = "filter",  script = "../examples/flights/filter.lua",  workers = 1 },
    { name = "reducer", script = "../examples/flights/reducer.lua", workers = 1 },
  },
  sink = { script = "../examples/flights/printer.lua" },
  security = "encrypted",
  on_error = "skip",
}
