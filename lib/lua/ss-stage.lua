-- ss-stage: runs one stage script of a pipeline spec as a worker or a sink.
--
-- A stage script returns a function that receives the input stream (an rx
-- Observable) and returns the stage's output stream; a sink script's function
-- subscribes to the stream it receives. For example:
--
--   local csv = require 'csv'
--   return function(stream)
--     return stream:map(function(line) return csv.parse(line)[9] end)
--   end
local ZmqRx = require 'zmq-rx'

local function load_stage(path)
  local chunk, err = loadfile(path, 't')
  if not chunk then error(err, 0) end
  local ok, fn = pcall(chunk)
  if not ok then error(('%s: %s'):format(path, tostring(fn)), 0) end
  if type(fn) ~= 'function' then
    error(('%s: the script must return a function(stream) that builds the stage, got %s')
      :format(path, type(fn)), 0)
  end
  return fn
end

-- Print the sink's summary to stderr (results own stdout), and as JSON to
-- SS_SUMMARY_FILE when set.
local function report(summary)
  if not summary then return end
  local out = io.stderr
  local secs = summary.seconds or 0
  local verdict
  if summary.complete then
    verdict = ('complete: all %d source batches accounted for%s'):format(summary.expected,
      summary.foreign_note and ('; ignored ' .. summary.foreign_note) or '')
  else
    verdict = 'INCOMPLETE: ' .. table.concat(summary.reasons, '; ')
  end
  out:write(('summary: %d rows in %.2f s (%.0f rows/s); %s\n'):format(summary.rows, secs,
    secs > 0 and summary.rows / secs or 0, verdict))
  if summary.run then
    out:write(('  run %s%s\n'):format(summary.run, summary.run_pinned and '' or
      ' (not pinned: SS_RUN unset, so it was taken from the first batch; a replay of a whole' ..
      ' earlier run would not be noticed)'))
  end
  out:write(('  %-12s %7s %12s %12s %9s %8s %8s %8s %11s\n'):format('stage', 'workers', 'in', 'out', 'skipped',
    'refused', 'rejected', 'foreign', 'redelivered'))
  for _, s in ipairs(summary.stages) do
    out:write(('  %-12s %7d %12d %12d %9d %8d %8d %8d %11d\n'):format(s.stage, s.workers, s['in'], s.out,
      s.skipped, s.refused, s.rejected, s.foreign, s.redelivered))
  end
  local sink = summary.sink
  out:write(('  %-12s %7d %12d %12s %9d %8d %8d %8d %11d\n'):format('sink', 1, sink['in'], '-', sink.skipped,
    sink.refused, sink.rejected, sink.foreign, sink.redelivered))
  local path = os.getenv('SS_SUMMARY_FILE')
  if path and path ~= '' then
    local f = assert(io.open(path, 'w'))
    f:write(require('json').encode(summary), '\n')
    f:close()
  end
end

-- The code an enclave loads for stages fused in one worker: each script's
-- text as a function, composed in order.
local function fused_code(scripts)
  local out, names = {}, {}
  for i, path in ipairs(scripts) do
    local f = assert(io.open(path, 'r'))
    local text = f:read('a')
    f:close()
    out[#out + 1] = ('local stage%d = (function(...)\n%s\nend)()'):format(i, text)
    names[#names + 1] = ('stage%d'):format(i)
  end
  out[#out + 1] = 'return function(stream)'
  for _, n in ipairs(names) do out[#out + 1] = ('  stream = %s(stream)'):format(n) end
  out[#out + 1] = '  return stream\nend'
  return table.concat(out, '\n')
end

-- role: "worker" or "sink"; scripts: the script paths (several for a worker
-- runs those stages fused, each one's output feeding the next).
return function(role, scripts, from, to)
  if role == 'worker' and ZmqRx.config.enclave then
    -- the stage's code is loaded by the enclave, never run by this process
    if #scripts == 1 then
      return ZmqRx.enclave_worker({ script = scripts[1] }, from, to)
    end
    return ZmqRx.enclave_worker({ code = fused_code(scripts), name = '=' .. table.concat(scripts, '+') },
      from, to)
  end
  local fns = {}
  for i, path in ipairs(scripts) do fns[i] = load_stage(path) end
  local stream = ZmqRx.Subject.fromZmqSocket(from)
  if role == 'sink' then
    fns[1](stream)
    local summary = ZmqRx.summary()
    report(summary)
    return summary
  end
  local out = stream
  for i, fn in ipairs(fns) do
    out = fn(out)
    if type(out) ~= 'table' or type(out.subscribeToSocket) ~= 'function' then
      error(('%s: the stage function must return an observable (the output stream), got %s')
        :format(scripts[i], type(out)), 0)
    end
  end
  return out:subscribeToSocket(to)
end
