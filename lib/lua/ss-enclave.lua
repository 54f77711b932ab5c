-- ss-enclave: the stage driver inside an enclave (enclave/core.c, docs/enclave.md).
--
-- The core loads this chunk into the enclave's restricted Lua state with a
-- table of host functions and drives it; user code cannot require it. It is
-- the worker loop of zmq-rx.lua without the sockets: a stage script
-- `return function(stream) ... end` is run once, at start-up, on an input
-- stream whose subscribers join the current group; each group of batches is
-- a new Subject, the stage chain subscribed to it with a collector that
-- writes the output batch; events are fed one record at a time under the
-- CPU budget; closing a group completes the Subject, so reduce and
-- friends emit their partial result.
--
-- Error policy, as in zmq-rx: an error in user code skips the record and is
-- counted, the first messages of a call kept for the host's log; with
-- on_error = fail the first one stops the stage (the call fails).
--
--   host.run(f, ...)   -> true | false, err: f(...) protected, under the budget
--   host.emit(v)       add v to the output batch (raises when it cannot)
--   host.stage         stage name for messages
--   host.fail          on_error = fail
local host = ...
if type(host) ~= 'table' or type(host.run) ~= 'function' then
  error('ss-enclave is the driver of an enclave; it cannot be required', 0)
end

local Rx = require 'rx'

-- Captured now, before user code runs: a stage that replaces globals only
-- changes its own view.
local run, emit = host.run, host.emit
local sformat, tostring, type, error = string.format, tostring, type, error
local concat = table.concat

local stage = host.stage or 'stage'
local fail = host.fail and true or false
local KEEP = 3                       -- messages kept per call

local M = {}
local chain                          -- the stage's output stream
local current                        -- Subject of the open group, or nil
local cur = { info = nil, index = nil } -- the record being processed
local call                           -- this call: skipped count and messages
local failure                        -- under fail: the first error of the call

-- The record being processed, for messages: its input line when the batch
-- comes straight from a source, else its batch and index.
local function describe()
  local i = cur.info
  if not i or not cur.index then
    return sformat('stage %s, end of a group', stage)
  end
  if i.nids == 1 and i.origin > 0 and i.source == i.producer then
    return sformat('stage %s, input line %d', stage, i.origin + cur.index - 1)
  end
  return sformat('stage %s, event %d of batch %016x#%d', stage, cur.index, i.producer, i.seq)
end

local function keep(msg)
  local m = call.messages
  if #m < KEEP then m[#m + 1] = msg else call.more = call.more + 1 end
end

-- Rx.util.onUserError: true skips the record, false lets the error stop
-- the chain (on_error = fail).
local function on_user_error(err, op)
  call.skipped = call.skipped + 1
  local msg = sformat('%s: %s%s', describe(), op and (op .. ': ') or '', tostring(err))
  if fail then
    failure = failure or msg
    return false
  end
  keep(msg)
  return true
end
Rx.util.onUserError = on_user_error

local function chain_error(err)
  failure = failure or sformat('%s: %s', describe(), tostring(err))
end

local function noop() end

-- Load: run the script's chunk and the stage function, each under the
-- budget. Returns whether the chain keeps state across events.
function M.init(chunk, name)
  local fn
  local ok, err = run(function() fn = chunk() end)
  if not ok then error(sformat('%s: %s', name, tostring(err)), 0) end
  if type(fn) ~= 'function' then
    error(sformat('%s: the script must return a function(stream) that builds the stage, got %s',
      name, type(fn)), 0)
  end
  local stream = Rx.Observable.create(function(observer)
    if not current then
      error('the stage subscribed to its input outside a batch', 0)
    end
    return current:subscribe(observer)
  end)
  local out
  ok, err = run(function() out = fn(stream) end)
  if not ok then error(sformat('%s: building the stage: %s', name, tostring(err)), 0) end
  if type(out) ~= 'table' or type(out.subscribe) ~= 'function' then
    error(sformat('%s: the stage function must return an observable (the output stream), got %s',
      name, type(out)), 0)
  end
  chain = out
  return out.stateful == true
end

local function feed(events, n)
  local subject = current
  local onNext = subject.onNext
  for i = 1, n do
    cur.index = i
    local ok, err = run(onNext, subject, events[i])
    if not ok and not on_user_error(err, nil) then return end
    if failure then return end
  end
end

-- One call: open a group (a new Subject, the chain subscribed to it), feed
-- events[1..n] of the batch described by info, close the group (complete
-- it: stateful operators emit). Any of the three may be skipped. Returns
-- the records skipped, the first messages ('' if none) and, under
-- on_error = fail, the error that stops the stage.
function M.batch(events, n, info, open, close)
  call = { skipped = 0, messages = {}, more = 0 }
  failure = nil
  if open then
    current = Rx.Subject.create()
    cur.info, cur.index = nil, nil
    local ok, err = run(chain.subscribe, chain, emit, chain_error, noop)
    if not ok then
      failure = sformat('stage %s: subscribing the stage to its input: %s', stage, tostring(err))
    end
  end
  if events and current and not failure then
    cur.info = info
    feed(events, n)
  end
  if close and current then
    local subject = current
    current = nil
    cur.index = nil
    if not failure then
      local ok, err = run(subject.onCompleted, subject)
      if not ok then on_user_error(err, 'onCompleted') end
    end
  end
  cur.info = nil
  local text = concat(call.messages, '; ')
  if call.more > 0 then text = sformat('%s; (%d more)', text, call.more) end
  return call.skipped, text, failure
end

return M
