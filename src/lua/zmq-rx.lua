-- zmq-rx: the seed's ZeroMQ extension of rx, on the SecureStreams router
-- protocol (docs/protocol.md).
--
--   Rx.Subject.fromZmqSocket(addr [, opts])   a stream received from a router
--   observable:subscribeToSocket(addr [, opts])  send a stream to a router
--   ZmqRx.sendZmqCompleted()                  kept for seed scripts (see below)
--
-- Events travel in batches (about 64 KiB), never one message per event.
-- A chain that starts at fromZmqSocket and ends at subscribeToSocket is a
-- worker: it joins the downstream router, then the upstream one, and runs the
-- chain once per batch (stateless chains) or once per group of batches
-- (chains with reduce, scan, ... : each group emits a partial result). A
-- batch is acknowledged upstream only once the downstream router has
-- receipted the output covering it, so a worker can die at any time without
-- losing or doubling an event. A chain that starts elsewhere (a file, a
-- table) and ends at subscribeToSocket is a source. A chain that starts at
-- fromZmqSocket and ends at subscribe is a sink: it blocks until the end of
-- the stream, then calls onCompleted.
--
-- Settings come from the environment, as the seed's compose file passed
-- FROM and TO: SS_NAME (component name in logs), SS_STAGE (stage name in the
-- statistics), SS_ID, SS_STREAM (pipeline id), SS_ON_ERROR (skip or fail),
-- SS_GROUP (batches per partial result, default 32), SS_IDLE_MS (flush a
-- partial result when no batch came for this long, default 50).

local Rx = require 'rx'
local net = require 'securestreams.net'

local ZmqRx = setmetatable({}, { __index = Rx })

local env = os.getenv
local function setting(name, default)
  local v = env(name)
  if v == nil or v == '' then return default end
  return v
end

local config = {
  name = setting('SS_NAME', 'lua'),
  stage = setting('SS_STAGE', nil),
  id = tonumber(setting('SS_ID', '')) or nil,
  on_error = setting('SS_ON_ERROR', 'skip'),
  group = tonumber(setting('SS_GROUP', '32')),
  idle_ms = tonumber(setting('SS_IDLE_MS', '50')),
  pos = tonumber(setting('SS_POS', '0')),
  log_limit = 10,
}
ZmqRx.config = config

if config.on_error ~= 'skip' and config.on_error ~= 'fail' then
  error(("SS_ON_ERROR must be 'skip' or 'fail', not %q"):format(config.on_error))
end

local function log(fmt, ...)
  io.stderr:write('[', config.name, '] ', fmt:format(...), '\n')
end

local function link_opts(opts)
  opts = opts or {}
  config.id = config.id or opts.id or net.new_id()
  return { name = opts.name or config.name, id = config.id, window = opts.window }
end

local function new_stats(stage)
  return { stage = stage or config.stage or config.name, name = config.name, pos = config.pos,
           ['in'] = 0, out = 0, skipped = 0, batches = 0, refused = 0 }
end

-- Bad records: the first few are logged with where they came from, every one
-- is counted; with SS_ON_ERROR=fail the first one stops the component.
local Failure = {}
local function error_policy(stats, where)
  local logged = 0
  return function(err, op)
    stats.skipped = stats.skipped + 1
    local msg = ('%s: %s%s'):format(where(), op and (op .. ': ') or '', tostring(err))
    if config.on_error == 'fail' then
      Failure.message = Failure.message or msg
      return false
    end
    if logged < config.log_limit then
      logged = logged + 1
      log('skipped a record: %s', msg)
      if logged == config.log_limit then log('(further skipped records are counted, not logged)') end
    end
    return true
  end
end

local function check_failure()
  if Failure.message then
    error({ securestreams_failure = Failure.message }, 0)
  end
end

-- Describe the record being processed for error messages: the input line
-- when the batch comes straight from a source, else the batch and index.
local function describe(cur)
  if cur.lineage and #cur.lineage == 16 and cur.origin and cur.origin > 0 then
    local ids = net.lineage_ids(cur.lineage)
    if ids[1][1] == cur.producer then
      return ('stage %s, input line %d'):format(config.stage or config.name, cur.origin + cur.index - 1)
    end
  end
  return ('stage %s, event %d of batch %s#%d'):format(config.stage or config.name, cur.index or 0,
    net.hex(cur.producer or 0), cur.seq or 0)
end

-- Feed events[from..] into subject, resuming after a record whose error
-- escaped every operator (the hook decides whether to go on).
local function feed(subject, events, cur, hook)
  local i = 1
  local n = #events
  local function run()
    for k = i, n do
      cur.index = k
      subject:onNext(events[k])
    end
  end
  while i <= n do
    local ok, err = pcall(run)
    if ok then return end
    if type(err) == 'table' and err.securestreams_failure then error(err, 0) end
    if not hook(err, nil) then return end
    i = cur.index + 1
  end
end

-- fromZmqSocket: the observable's subscribe either registers the observer in
-- the current group (when a worker drives it) or runs the receive loop (sink).
function Rx.Subject.fromZmqSocket(addr, opts)
  assert(type(addr) == 'string', 'fromZmqSocket: address expected')
  local source = { addr = addr, opts = opts, group = nil }
  local observable = Rx.Observable.create(function(observer)
    if source.group then
      return source.group:subscribe(observer)
    end
    return ZmqRx._sink_loop(source, observer)
  end)
  observable.zmq_source = source
  return observable
end
Rx.Observable.fromZmqSocket = Rx.Subject.fromZmqSocket

function ZmqRx._sink_loop(source, observer)
  local stats = new_stats()
  local consumer = net.consumer(source.addr, link_opts(source.opts))
  net.ready()
  local cur = {}
  local hook = error_policy(stats, function() return describe(cur) end)
  Rx.util.onUserError = hook
  local subject = Rx.Subject.create()
  subject:subscribe(observer)
  local covered, eos = 0, nil
  while true do
    local kind, tag, data, lineage, origin, flags, producer, seq = consumer:recv(-1)
    if kind == 'data' then
      cur.lineage, cur.origin, cur.producer, cur.seq = lineage, origin, producer, seq
      stats['in'] = stats['in'] + #data
      stats.batches = stats.batches + 1
      covered = covered + #lineage // 16
      local ok, err = pcall(feed, subject, data, cur, hook)
      consumer:ack(tag)
      if not ok or Failure.message then
        ZmqRx.failed = true
        error('stopped by the error policy (on_error = fail): ' ..
          (Failure.message or (type(err) == 'table' and err.securestreams_failure) or tostring(err)), 0)
      end
    elseif kind == 'bad' then
      stats.refused = stats.refused + 1
      log('refused a batch: %s', data)
      consumer:ack(tag)
    elseif kind == 'eos' then
      eos = data
      consumer:ack(tag)
      break
    end
  end
  consumer:close()
  ZmqRx.last_run = { stats = eos.stats or {}, own = stats, covered = covered }
  local ok, err = pcall(subject.onCompleted, subject)
  Rx.util.onUserError = nil
  if not ok then error(err, 0) end
  if Failure.message then
    ZmqRx.failed = true
    error('stopped by the error policy (on_error = fail): ' .. Failure.message, 0)
  end
  return Rx.Subscription.create(function() end)
end

-- Worker: chain rooted at a zmq source, sent to a router.
local function worker_loop(chain, source, addr, opts)
  local lopts = link_opts(opts)
  local stats = new_stats()
  local producer = net.producer(addr, lopts)     -- downstream first (docs/protocol.md, rule 1)
  local consumer = net.consumer(source.addr, link_opts(source.opts))
  producer:tick_with(consumer)
  net.ready()
  local writer = net.writer()
  local stateful = chain.stateful
  local cur = {}
  local hook = error_policy(stats, function() return describe(cur) end)
  Rx.util.onUserError = hook

  local pending, head, tail = {}, 1, 0          -- published outputs awaiting receipt
  local group = nil                             -- { tags, lineages, batches, origin }

  local function settle()
    local receipted = producer:receipted()
    while head <= tail and pending[head].pubseq < receipted do
      for _, tag in ipairs(pending[head].tags) do consumer:ack(tag) end
      pending[head] = nil
      head = head + 1
    end
  end

  local function chain_error(err)
    Failure.message = Failure.message or ('%s: %s'):format(describe(cur), tostring(err))
  end

  local function open_group()
    local subject = Rx.Subject.create()
    source.group = subject
    chain:subscribe(function(v) writer:add(v) end, chain_error, function() end)
    source.group = subject
    group = { subject = subject, tags = {}, lineages = {}, batches = 0, origin = 0 }
  end

  local function close_group()
    local g = group
    group = nil
    local ok, err = pcall(g.subject.onCompleted, g.subject)
    if not ok then
      if type(err) == 'table' and err.securestreams_failure then error(err, 0) end
      hook(err, 'onCompleted')
    end
    check_failure()
    local lineage = #g.lineages == 1 and g.lineages[1] or net.lineage_union(g.lineages)
    stats.out = stats.out + writer:count()
    local pubseq = producer:publish(writer, lineage, g.batches == 1 and g.origin or 0)
    writer:reset()
    tail = tail + 1
    pending[tail] = { pubseq = pubseq, tags = g.tags }
    settle()
  end

  while true do
    local kind, tag, data, lineage, origin, flags, producer_id, seq =
      consumer:recv(group and config.idle_ms or 250)
    settle()
    if kind == nil then
      if group then close_group() end
      producer:service(0)
    elseif kind == 'data' then
      local redelivered = flags & net.REDELIVERED ~= 0
      if group and (redelivered or not stateful) then close_group() end
      if not group then open_group() end
      cur.lineage, cur.origin, cur.producer, cur.seq = lineage, origin, producer_id, seq
      stats['in'] = stats['in'] + #data
      stats.batches = stats.batches + 1
      group.tags[#group.tags + 1] = tag
      group.lineages[#group.lineages + 1] = lineage
      group.batches = group.batches + 1
      group.origin = origin
      feed(group.subject, data, cur, hook)
      check_failure()
      if not stateful or redelivered or group.batches >= config.group then close_group() end
    elseif kind == 'bad' then
      stats.refused = stats.refused + 1
      log('refused a batch: %s', data)
      consumer:ack(tag)
    elseif kind == 'eos' then
      if group then close_group() end
      producer:drain()
      settle()
      if flags & net.LATE == 0 then
        local all = data.stats or {}
        all[net.hex(lopts.id)] = stats
        producer:publish_eos({ members = data.members or {}, stats = all })
        producer:drain()
      end
      consumer:ack(tag)
      break
    end
  end
  Rx.util.onUserError = nil
  producer:close()
  consumer:close()
  return stats
end

-- Source: any other chain, sent to a router as batches of its own lineage.
local function source_loop(chain, addr, opts)
  local lopts = link_opts(opts)
  local id = lopts.id
  local stats = new_stats('source')
  stats.t0 = net.now()
  local producer = net.producer(addr, lopts)
  local writer = net.writer()
  local seq, first, n = 0, 1, 0
  local function publish()
    producer:publish(writer, net.lineage(id, seq), first)
    stats.batches = stats.batches + 1
    stats.out = stats.out + writer:count()
    writer:reset()
    seq = seq + 1
    first = n + 1
  end
  local failed
  chain:subscribe(function(v)
    n = n + 1
    stats['in'] = n
    writer:add(v)
    if writer:bytes() >= net.BATCH_BYTES then publish() end
  end, function(err)
    failed = err
  end, function() end)
  if failed then
    producer:close()
    error(tostring(failed), 0)
  end
  if writer:count() > 0 then publish() end
  producer:drain()
  producer:publish_eos({ members = { id }, stats = { [net.hex(id)] = stats } })
  producer:drain()
  producer:close()
  return stats
end

function Rx.Observable:subscribeToSocket(addr, opts)
  assert(type(addr) == 'string', 'subscribeToSocket: address expected')
  local root = self.root or self
  local ok, err
  if root.zmq_source then
    ok, err = pcall(worker_loop, self, root.zmq_source, addr, opts)
  else
    ok, err = pcall(source_loop, self, addr, opts)
  end
  if not ok then
    if type(err) == 'table' and err.securestreams_failure then
      ZmqRx.failed = true
      error('stopped by the error policy (on_error = fail): ' .. err.securestreams_failure, 0)
    end
    error(err, 0)
  end
  return err
end

-- The seed's printer calls this in onCompleted to tell its controller the
-- run is over. Our end of stream travels in the protocol, so there is
-- nothing to send; it marks the run completed for scripts that check.
function ZmqRx.sendZmqCompleted()
  ZmqRx.completed = true
end

-- A summary of a finished sink loop: { rows, batches, expected, complete,
-- stages = { {stage, in, out, skipped, refused, workers}... }, seconds }
function ZmqRx.summary()
  local run = ZmqRx.last_run
  if not run then return nil end
  local stages, order, expected, t0, rows = {}, {}, 0, nil, 0
  for _, s in pairs(run.stats) do
    local st = stages[s.stage]
    if not st then
      st = { stage = s.stage, pos = s.pos or 0, ['in'] = 0, out = 0, skipped = 0, refused = 0, workers = 0 }
      stages[s.stage] = st
      order[#order + 1] = s.stage
    end
    st['in'] = st['in'] + (s['in'] or 0)
    st.out = st.out + (s.out or 0)
    st.skipped = st.skipped + (s.skipped or 0)
    st.refused = st.refused + (s.refused or 0)
    st.workers = st.workers + 1
    if s.stage == 'source' then
      expected = expected + (s.batches or 0)
      rows = rows + (s.out or 0)
      if s.t0 and (not t0 or s.t0 < t0) then t0 = s.t0 end
    end
  end
  table.sort(order, function(a, b)
    local pa, pb = stages[a].pos, stages[b].pos
    if pa ~= pb then return pa < pb end
    return a < b
  end)
  local list = {}
  for _, name in ipairs(order) do list[#list + 1] = stages[name] end
  return {
    rows = rows, stages = list, expected = expected, covered = run.covered,
    complete = run.covered == expected, sink = run.own,
    seconds = t0 and (net.now() - t0) or nil,
  }
end

return ZmqRx
