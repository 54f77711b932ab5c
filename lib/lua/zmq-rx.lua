-- zmq-rx: the seed's ZeroMQ extension of rx, on the SecureStreams router
-- protocol (docs/protocol.md).
--
--   Rx.Subject.fromZmqSocket(addr [, opts])   a stream received from a router
--   observable:subscribeToSocket(addr [, opts])  send a stream to a router
--   ZmqRx.sendZmqCompleted()                  kept for seed scripts (see below)
--
-- Events travel in batches (about 1 MiB), never one message per event.
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
-- SS_ENCLAVE (isolated or inprocess: run the stage in an enclave),
-- SS_GROUP (batches per partial result, default 32), SS_IDLE_MS (flush a
-- partial result when no batch came for this long, default 50), SS_KEY_FILE
-- (the data key: the encrypted mode, where every batch is sealed and every
-- statistics record authenticated; docs/crypto.md), SS_RUN (the run id every
-- sealed batch and record is bound to: unset, a source picks a fresh one and
-- logs it, a consumer adopts the run of its first authentic batch), SS_POS
-- (this component's stage position: a worker's inputs come from SS_POS - 1;
-- unset, adopted from the first batch as one after its maker's) and
-- SS_SOURCES (the sink: how many sources to expect, default 1).

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
  pos = tonumber(setting('SS_POS', '')),
  run = setting('SS_RUN', nil),
  sources = tonumber(setting('SS_SOURCES', '1')),
  key_file = setting('SS_KEY_FILE', nil),
  enclave = setting('SS_ENCLAVE', nil),
  log_limit = 10,
}
ZmqRx.config = config

if config.on_error ~= 'skip' and config.on_error ~= 'fail' then
  error(("SS_ON_ERROR must be 'skip' or 'fail', not %q"):format(config.on_error))
end
if config.run and not config.run:match('^%x+$') or config.run and #config.run ~= 32 then
  error(("SS_RUN must be a run id of 32 hex digits, not %q"):format(config.run), 0)
end
if not config.sources or config.sources < 1 or config.sources ~= math.floor(config.sources) then
  error(("SS_SOURCES must be a number of sources (1 or more), not %q"):format(setting('SS_SOURCES', '')), 0)
end
if config.run then config.run = config.run:lower() end

local function log(fmt, ...)
  io.stderr:write('[', config.name, '] ', fmt:format(...), '\n')
end

-- The data key, loaded once; a wrong or unreadable key file stops the
-- component before it joins anything.
local function data_key()
  if config.key_file and not config.key then
    config.key = net.key(config.key_file)
  end
  return config.key
end

-- Link options; `host_only` for an enclave worker's host, which never
-- holds the key: its links move sealed batches as they are. The run and
-- position bind what the link seals and opens (securestreams.net); a
-- source's link seals as the source (`source`).
local function link_opts(opts, host_only, source)
  opts = opts or {}
  config.id = config.id or opts.id or net.new_id()
  return { name = opts.name or config.name, id = config.id, window = opts.window,
           key = not host_only and data_key() or nil, run = config.run,
           pos = not source and config.pos or nil, source = source }
end

local function new_stats(stage)
  return { stage = stage or config.stage or config.name, name = config.name, pos = config.pos or 0,
           ['in'] = 0, out = 0, skipped = 0, batches = 0, refused = 0, rejected = 0, foreign = 0 }
end

-- Batches that fail authentication, come twice from one producer, were made
-- by another run or at another stage position, or are plaintext in the
-- encrypted mode are rejected: counted, the first ones logged with producer
-- and sequence number, never processed. A batch sealed with another key is
-- counted apart (`foreign`), logged with its key id and acknowledged: never
-- a reason to stop, since anyone who can reach a router can send one. A
-- component that received nothing else says so at the end of the stream.

-- Sets of sequence numbers, 64 to an integer: the sink remembers every
-- source batch it received (about 1 KiB per 500,000 batches).
local function seq_has(set, q) return set ~= nil and (set[q >> 6] or 0) & (1 << (q & 63)) ~= 0 end
local function seq_add(set, q) set[q >> 6] = (set[q >> 6] or 0) | (1 << (q & 63)) end
-- how many of first..last the set holds: a pass over its words, not the range
local function seq_count(set, first, last)
  local n = 0
  for w, bits in pairs(set or {}) do
    local lo, hi = w << 6, (w << 6) + 63
    if hi >= first and lo <= last then
      for b = 0, 63 do
        local q = lo + b
        if q >= first and q <= last and bits & (1 << b) ~= 0 then n = n + 1 end
      end
    end
  end
  return n
end

-- Batches sealed with another key: counted in stats.foreign, the key ids
-- seen kept (a handful), the first ones logged. `ended()` at the end of the
-- stream logs an error when nothing else came.
local function foreign_counter(stats)
  local logged, ids, nids = 0, {}, 0
  local self = {}
  function self.add(why, producer, seq, key_id)
    stats.foreign = stats.foreign + 1
    if key_id and not ids[key_id] and nids < 8 then
      ids[key_id] = true
      nids = nids + 1
    end
    if logged < config.log_limit then
      logged = logged + 1
      log('ignored batch %d of producer %s: %s', seq, net.hex(producer), why)
      if logged == config.log_limit then log('(further batches under other keys are counted, not logged)') end
    end
  end
  function self.key_ids()
    local list = {}
    for id in pairs(ids) do list[#list + 1] = id end
    table.sort(list)
    return list
  end
  function self.ended(own_key_id)
    if stats.foreign > 0 and stats.batches == 0 then
      log('error: all %d batches received were sealed with another key (key id %s); this component has key id %s (SS_KEY_FILE)',
        stats.foreign, table.concat(self.key_ids(), ', '), own_key_id or '?')
    end
  end
  return self
end

local function rejecter(stats)
  local logged = 0
  local window = net.replay()   -- the replay window the enclave uses too (wire/replay.c)
  local function reject(why, producer, seq)
    stats.rejected = stats.rejected + 1
    stats.first_rejected = stats.first_rejected or
      ('batch %d of producer %s: %s'):format(seq, net.hex(producer), why)
    if config.on_error == 'fail' then
      ZmqRx.failed = true
      error(('stopped by the error policy (on_error = fail): rejected batch %d of producer %s: %s')
        :format(seq, net.hex(producer), why), 0)
    end
    if logged < config.log_limit then
      logged = logged + 1
      log('rejected batch %d of producer %s: %s', seq, net.hex(producer), why)
    end
  end
  -- true when (producer, seq) is new; else rejects it as a replay: a window
  -- of sequence numbers below each producer's newest is remembered, older
  -- ones are refused, so memory stays bounded however long the stream.
  local function fresh(producer, seq)
    local ok, why = window:check(producer, seq)
    if not ok then
      reject(why, producer, seq)
      return false
    end
    return true
  end
  return reject, fresh
end

-- A statistics record for the end of stream: sealed in the encrypted mode,
-- so no router can forge or change the counts the sink reports.
local function stats_record(producer, id, stats)
  if not config.key then return stats end
  local sealed, n = producer:seal_record(net.hex(id), stats)
  return { sealed = sealed, n = n }
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
  local onNext = subject.onNext
  local function run()
    for k = i, n do
      cur.index = k
      onNext(subject, events[k])
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
  stats.redelivered = 0
  local consumer = net.consumer(source.addr, link_opts(source.opts))
  net.ready()
  local cur = {}
  local hook = error_policy(stats, function() return describe(cur) end)
  local reject, fresh = rejecter(stats)
  local foreign = foreign_counter(stats)
  Rx.util.onUserError = hook
  local subject = Rx.Subject.create()
  subject:subscribe(observer)
  local covered, eos = {}, nil
  while true do
    local kind, tag, data, lineage, origin, flags, producer, seq, key_id = consumer:recv(-1)
    if (kind == 'data' or kind == 'rejected') and flags & net.REDELIVERED ~= 0 then
      stats.redelivered = stats.redelivered + 1
    end
    local ids = kind == 'data' and net.lineage_ids(lineage)
    if ids and not fresh(producer, seq) then
      ids = nil
    elseif ids then
      -- a result covering a source batch already counted would count it
      -- twice: routers drop those, and the sink does not trust routers
      for _, id in ipairs(ids) do
        if seq_has(covered[id[1]], id[2]) then
          reject(('covers source batch %s#%d a second time'):format(net.hex(id[1]), id[2]), producer, seq)
          ids = nil
          break
        end
      end
    end
    if ids then
      cur.lineage, cur.origin, cur.producer, cur.seq = lineage, origin, producer, seq
      stats['in'] = stats['in'] + #data
      stats.batches = stats.batches + 1
      for _, id in ipairs(ids) do
        local c = covered[id[1]]
        if not c then c = {}; covered[id[1]] = c end
        seq_add(c, id[2])
      end
      local ok, err = pcall(feed, subject, data, cur, hook)
      consumer:ack(tag)
      if not ok or Failure.message then
        ZmqRx.failed = true
        error('stopped by the error policy (on_error = fail): ' ..
          (Failure.message or (type(err) == 'table' and err.securestreams_failure) or tostring(err)), 0)
      end
    elseif kind == 'data' then
      consumer:ack(tag, true)
    elseif kind == 'rejected' then
      reject(data, producer, seq)
      consumer:ack(tag, true)
    elseif kind == 'foreign' then
      foreign.add(data, producer, seq, key_id)
      consumer:ack(tag, true)
    elseif kind == 'bad' then
      stats.refused = stats.refused + 1
      log('refused a batch: %s', data)
      consumer:ack(tag, true)
    elseif kind == 'eos' then
      eos = data
      consumer:ack(tag)
      break
    end
  end
  local run, pos = consumer:binding()
  consumer:close()
  foreign.ended(config.key and config.key:id())
  ZmqRx.last_run = { stats = eos.stats or {}, own = stats, covered = covered, run = run, pos = pos,
                     foreign_keys = foreign.key_ids() }
  local ok, err = pcall(subject.onCompleted, subject)
  Rx.util.onUserError = nil
  if not ok then error(err, 0) end
  if Failure.message then
    ZmqRx.failed = true
    error('stopped by the error policy (on_error = fail): ' .. Failure.message, 0)
  end
  return Rx.Subscription.create(function() end)
end

-- Input batches are acknowledged upstream once the downstream router has
-- receipted the output that covers them (docs/architecture.md).
local function acknowledger(producer, consumer)
  local pending, head, tail = {}, 1, 0
  local acks = {}
  function acks.settle()
    local receipted = producer:receipted()
    while head <= tail and pending[head].pubseq < receipted do
      for _, tag in ipairs(pending[head].tags) do consumer:ack(tag) end
      pending[head] = nil
      head = head + 1
    end
  end
  function acks.add(pubseq, tags)
    tail = tail + 1
    pending[tail] = { pubseq = pubseq, tags = tags }
    acks.settle()
  end
  return acks
end

-- The worker loop: one for every kind of worker. It owns receiving,
-- grouping, publishing order, acknowledgement and the end of stream
-- (docs/architecture.md, "Exactly-once results under worker failure";
-- docs/protocol.md); what a batch turns into is the stage's business. A
-- stage is a table of functions:
--
--   stage.stateful            true: batches are grouped into one output
--   stage.receive(consumer, timeout_ms) -> nil when nothing came, or a
--       delivery {kind, tag, flags, ...}; kind 'eos' carries the end of
--       stream decoded in `data`, or undecoded in `payload`
--   stage.admit(d) -> false when the batch was disposed of (refused,
--       rejected, replayed): it is acknowledged at once, flagged REJECTED
--   stage.add(d, redelivered) -> true when the batch was rejected: it is
--       acknowledged at once, flagged REJECTED, and joins no group
--   stage.flush() -> the publication number of the output covering the
--       open group, or nil when nothing was published
--   stage.finish(id) -> this worker's statistics record for the end of stream
--   stage.close()             releases what the stage holds (its owner calls it)
--
-- consumer and producer are securestreams.net links (or objects with their
-- methods), opened producer first; the caller closes them and the stage. A
-- redelivered batch is always a group of its own; a stateless stage makes
-- one output per batch; a stateful one groups up to config.group batches,
-- or until no batch came for config.idle_ms. At the end of stream: flush,
-- wait until downstream received everything, publish the end of stream
-- with this worker's statistics under `id` (flagged LATE or not),
-- acknowledge, return. A batch not accepted is acknowledged REJECTED. Errors (the error
-- policy, a broken link) propagate with nothing closed.
local function worker_loop(consumer, producer, stage, id)
  local acks = acknowledger(producer, consumer)
  local settle = acks.settle
  local group = nil                             -- { tags } of the open group's batches

  local function close_group()
    local tags = group.tags
    group = nil
    local pubseq = stage.flush()
    if pubseq then
      acks.add(pubseq, tags)
    else
      for _, tag in ipairs(tags) do consumer:ack(tag) end   -- nothing downstream to wait for
    end
  end

  while true do
    local d = stage.receive(consumer, group and config.idle_ms or 250)
    settle()
    if d == nil then
      if group then close_group() end
      producer:service(0)
    elseif d.kind == 'eos' then
      if group then close_group() end
      producer:drain()
      settle()
      -- forwarded even when flagged LATE: routers do not authenticate the
      -- flag, and one that lied would stall the stream (docs/protocol.md, rule 6)
      local eos = d.data or net.decode(d.payload)
      local all = eos.stats or {}
      all[net.hex(id)] = stage.finish(id)
      producer:publish_eos({ members = eos.members or {}, stats = all })
      producer:drain()
      consumer:ack(d.tag)
      return
    elseif not stage.admit(d) then
      consumer:ack(d.tag, true)   -- not accepted: nothing downstream to wait for
    else
      local redelivered = d.flags & net.REDELIVERED ~= 0
      if group and redelivered then close_group() end
      if stage.add(d, redelivered) then
        consumer:ack(d.tag, true)
      else
        group = group or { tags = {} }
        group.tags[#group.tags + 1] = d.tag
        if not stage.stateful or redelivered or #group.tags >= config.group then close_group() end
      end
    end
  end
end
ZmqRx.worker_loop = worker_loop

-- A stage made of a Lua chain rooted at fromZmqSocket, run in this process
-- on decoded batches; every group is one run of the chain (its onCompleted
-- ends a partial result), and every group publishes an output, empty or
-- not. It checks each batch (authentication failures, replays, payloads
-- that do not decode) and counts in stage.stats.
local function chain_stage(chain, producer)
  local source = (chain.root or chain).zmq_source
  local stats = new_stats()
  stats.redelivered = 0
  local writer = net.writer()
  local cur = {}
  local hook = error_policy(stats, function() return describe(cur) end)
  local reject, fresh = rejecter(stats)
  local foreign = foreign_counter(stats)
  Rx.util.onUserError = hook
  local group = nil                             -- { subject, lineages, batches, origin }

  local function chain_error(err)
    Failure.message = Failure.message or ('%s: %s'):format(describe(cur), tostring(err))
  end

  local function open_group()
    local subject = Rx.Subject.create()
    source.group = subject
    chain:subscribe(function(v) writer:add(v) end, chain_error, function() end)
    source.group = subject
    group = { subject = subject, lineages = {}, batches = 0, origin = 0 }
  end

  local stage = { stateful = chain.stateful, stats = stats }

  function stage.receive(consumer, timeout)
    local kind, tag, data, lineage, origin, flags, producer_id, seq, key_id = consumer:recv(timeout)
    if kind == nil then return nil end
    return { kind = kind, tag = tag, data = data, lineage = lineage, origin = origin,
             flags = flags or 0, producer = producer_id, seq = seq, key_id = key_id }
  end

  function stage.admit(d)
    if d.flags & net.REDELIVERED ~= 0 then stats.redelivered = stats.redelivered + 1 end
    if d.kind == 'rejected' then
      reject(d.data, d.producer, d.seq)
      return false
    elseif d.kind == 'foreign' then
      foreign.add(d.data, d.producer, d.seq, d.key_id)
      return false
    elseif d.kind == 'bad' then
      stats.refused = stats.refused + 1
      log('refused a batch: %s', d.data)
      return false
    end
    return fresh(d.producer, d.seq)
  end

  -- A batch whose lineage overlaps the open group's would be counted twice
  -- in one partial result, which no router or sink could see once the
  -- lineages are merged: rejected, never processed. An honest router never
  -- delivers it (it parks a batch whose lineage is claimed by one not yet
  -- acknowledged, and this group's batches are acknowledged only once their
  -- partial is receipted downstream; docs/protocol.md, rules 3 and 5).
  local function overlapping(d)
    for _, part in ipairs(group and group.lineages or {}) do
      local source, seq = net.lineage_overlap(d.lineage, part)
      if source then
        return ('lineage %s#%d already in this partial'):format(net.hex(source), seq)
      end
    end
  end

  function stage.add(d)
    local why = overlapping(d)
    if why then
      reject(why, d.producer, d.seq)
      return true
    end
    if not group then open_group() end
    cur.lineage, cur.origin, cur.producer, cur.seq = d.lineage, d.origin, d.producer, d.seq
    stats['in'] = stats['in'] + #d.data
    stats.batches = stats.batches + 1
    group.lineages[#group.lineages + 1] = d.lineage
    group.batches = group.batches + 1
    group.origin = d.origin
    feed(group.subject, d.data, cur, hook)
    check_failure()
    return false
  end

  function stage.flush()
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
    return pubseq
  end

  function stage.finish(id)
    foreign.ended(config.key and config.key:id())
    return stats_record(producer, id, stats)
  end

  function stage.close() Rx.util.onUserError = nil end

  return stage
end
ZmqRx.chain_stage = chain_stage

-- A stage run in an enclave (a securestreams.enclave object): this process
-- only moves sealed batches in and sealed outputs out, and never holds the
-- key or a plaintext event. The enclave checks every batch itself and keeps
-- the statistics in its sealed record; its messages are logged here, the
-- first few. Its outputs are sealed under sequence numbers taken from the
-- producer.
local function enclave_stage(enc, producer)
  local logged = 0
  local made = nil                              -- a stateless stage's output, made with its batch
  local tally = { batches = 0, foreign = 0 }    -- what this host saw of the enclave's work
  local foreign = foreign_counter(tally)
  local function note(r)
    if r.message ~= '' and logged < config.log_limit then
      logged = logged + 1
      log('%s', r.message)
      if logged == config.log_limit then log('(further messages are counted, not logged)') end
    end
  end

  local stage = { stateful = enc:stateful() }

  function stage.receive(consumer, timeout)
    local tag, header, lineage, payload, flags = consumer:recv_raw(timeout)
    if not tag then return nil end
    return { kind = header:byte(2) == net.MSG_EOS and 'eos' or 'data', tag = tag, header = header,
             lineage = lineage, payload = payload, flags = flags }
  end

  function stage.admit() return true end

  function stage.add(d, redelivered)
    local r = enc:batch(d.header, d.lineage, d.payload, producer:take_seq(), redelivered)
    if r.foreign then
      -- the enclave counts it in its record; acknowledged, never processed
      foreign.add(r.message, string.unpack('<I8', d.header, 9), string.unpack('<I8', d.header, 17),
                  r.message:match('key id (%x+)'))
      return true
    end
    note(r)
    if not r.rejected then tally.batches = tally.batches + 1 end
    if not r.rejected and not stage.stateful then made = r end
    return r.rejected
  end

  function stage.flush()
    local r = made
    made = nil
    if not r then
      r = enc:flush(producer:take_seq())
      note(r)
    end
    if not r.output then return nil end
    return producer:publish_raw(r.header, r.lineage, r.payload)
  end

  function stage.finish(id)
    foreign.ended(nil)
    local seq = producer:take_seq()
    return { sealed = enc:finish(net.hex(id), seq), n = seq }
  end

  function stage.close() enc:close() end

  return stage
end
ZmqRx.enclave_stage = enclave_stage

-- Worker: chain rooted at a zmq source, sent to a router.
local function chain_worker(chain, addr, opts)
  local lopts = link_opts(opts)
  local producer = net.producer(addr, lopts)     -- downstream first (docs/protocol.md, rule 1)
  local source = (chain.root or chain).zmq_source
  local copts = link_opts(source.opts)
  copts.tick = producer                         -- heartbeats downstream while joining upstream
  local consumer = net.consumer(source.addr, copts)
  producer:tick_with(consumer)
  consumer:tick_with(producer)
  producer:follow(consumer)                     -- seal as the run and position the input fixed
  net.ready()
  local stage = chain_stage(chain, producer)
  worker_loop(consumer, producer, stage, lopts.id)
  stage.close()
  producer:close()
  consumer:close()
  return stage.stats
end

-- Enclave worker: the stage's code runs in an enclave (enclave.h). `spec`
-- is {script = path} or {code = text, name = chunkname}.
function ZmqRx.enclave_worker(spec, from, addr, opts)
  if not config.key_file then
    error('an enclave stage needs the data key (SS_KEY_FILE or --key): enclaves accept only sealed batches', 0)
  end
  local Enclave = require 'securestreams.enclave'
  local lopts = link_opts(opts, true)
  local producer = net.producer(addr, lopts)
  local consumer = net.consumer(from, { name = lopts.name, id = lopts.id, window = lopts.window,
                                        tick = producer })
  producer:tick_with(consumer)
  consumer:tick_with(producer)
  local stage = enclave_stage(Enclave.new({
    backend = config.enclave ~= '1' and config.enclave or nil,
    script = spec.script, code = spec.code, name = spec.name, key_file = config.key_file,
    stage = config.stage or config.name, fail = config.on_error == 'fail', producer = lopts.id,
    pos = config.pos or 0, run = config.run,
  }), producer)
  net.ready()
  worker_loop(consumer, producer, stage, lopts.id)
  stage.close()
  producer:close()
  consumer:close()
end

-- Source: any other chain, sent to a router as batches of its own lineage.
local function source_loop(chain, addr, opts)
  if data_key() and not config.run then
    config.run = net.new_run()
    log('run id %s (SS_RUN not set: a fresh one; give it to the sink as SS_RUN to pin it)', config.run)
  end
  local lopts = link_opts(opts, false, true)
  local id = lopts.id
  local stats = new_stats('source')
  stats.pos = 0
  stats.t0 = net.now()
  stats.lineage_source, stats.first_seq = id, 0
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
  producer:publish_eos({ members = { id }, stats = { [net.hex(id)] = stats_record(producer, id, stats) } })
  producer:drain()
  producer:close()
  return stats
end

function Rx.Observable:subscribeToSocket(addr, opts)
  assert(type(addr) == 'string', 'subscribeToSocket: address expected')
  local root = self.root or self
  local ok, err
  if root.zmq_source then
    ok, err = pcall(chain_worker, self, addr, opts)
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

-- A summary of a finished sink loop: rows, seconds, per stage counts, and
-- whether the result is complete: the expected number of sources
-- (SS_SOURCES) reported, every batch they declare received exactly once,
-- no forged statistics record, no batch whose lineage names a source no
-- source record declares. In the encrypted modes a statistics record counts
-- only when it authenticates and was made in this run; it is a source's
-- only when its authenticated maker is a source. Everything else is
-- reported as forged, with the reason logged. `reasons` names what made a
-- result incomplete (docs/threat-model.md).
function ZmqRx.summary()
  local run = ZmqRx.last_run
  if not run then return nil end
  local stages, order, t0, rows = {}, {}, nil, 0
  local expected, missing, forged, sources = 0, {}, 0, {}
  local reasons, forged_why = {}, {}
  local run_id = run.run
  local record_forged = 0
  local function forge(id, why)
    forged = forged + 1
    record_forged = record_forged + 1
    log('ignored the statistics of %s: %s', tostring(id), why)
    if #forged_why < 3 then forged_why[#forged_why + 1] = why end
  end
  -- open every record first: an unpinned sink that received no batch takes
  -- the run of its sources' records
  local records = {}
  for id, s in pairs(run.stats) do
    if type(s) ~= 'table' then s = {} end
    local maker
    if s.sealed and config.key then
      local opened, m = net.open_record(config.key, id, s.sealed, s.n or -1)
      if not opened then
        forge(id, m)
        s = nil
      else
        s, maker = opened, m
        if not run_id and maker.role == 'source' then run_id = maker.run end
      end
    elseif config.key then
      forge(id, 'not sealed')
      s = nil
    end
    if s then records[#records + 1] = { id = id, s = s, maker = maker } end
  end
  local zero_run = string.rep('0', 32)
  local worker_pos = {}   -- stage positions with an authenticated worker record of this run
  for _, r in ipairs(records) do
    local s, maker, ok = r.s, r.maker, true
    if maker then
      if maker.run ~= run_id and not (maker.role == 'worker' and maker.run == zero_run
                                      and (s.batches or 0) == 0) then
        forge(r.id, ('made by a %s of another run (run %s, this run is %s)'):format(maker.role, maker.run,
          run_id or 'not known'))
        ok = false
      elseif s.stage == 'source' and maker.role ~= 'source' then
        forge(r.id, ('labelled source, but made by a %s at stage position %d'):format(maker.role, maker.pos))
        ok = false
      else
        s.pos = maker.pos
        if maker.role == 'worker' then worker_pos[maker.pos] = true end
      end
    end
    local is_source = ok and (maker and maker.role == 'source' or not maker and s.stage == 'source')
    if ok and s.stage then
      local st = stages[s.stage]
      if not st then
        st = { stage = s.stage, pos = s.pos or 0, ['in'] = 0, out = 0, skipped = 0, refused = 0,
               rejected = 0, foreign = 0, redelivered = 0, workers = 0 }
        stages[s.stage] = st
        order[#order + 1] = s.stage
      end
      st['in'] = st['in'] + (s['in'] or 0)
      st.out = st.out + (s.out or 0)
      st.skipped = st.skipped + (s.skipped or 0)
      st.refused = st.refused + (s.refused or 0)
      st.rejected = st.rejected + (s.rejected or 0)
      st.foreign = st.foreign + (s.foreign or 0)
      st.redelivered = st.redelivered + (s.redelivered or 0)   -- absent from older enclaves' records
      st.workers = st.workers + 1
    end
    if is_source then
      sources[#sources + 1] = s
      rows = rows + (s.out or 0)
      if s.t0 and (not t0 or s.t0 < t0) then t0 = s.t0 end
    end
  end
  -- every batch a source says it sent, received once; the work is bounded
  -- by what was received (plus the names of the first missing ones), not
  -- by what a record declares, which in plain mode anyone can forge
  local covered, declared = 0, {}
  for _, src in ipairs(sources) do
    local source = src.lineage_source or 0
    local got = run.covered[source]
    local first = math.tointeger(src.first_seq) or 0
    local n = math.tointeger(src.batches) or 0
    if first < 0 then first = 0 end
    if n < 0 then n = 0 end
    declared[source] = true
    expected = expected + n
    local last = first + n - 1
    if last < first then last = math.maxinteger end   -- overflow: to the end
    local have = seq_count(got, first, last)
    covered = covered + have
    -- each step finds a received batch (at most `have`) or a missing one
    -- (at most 10): the loop ends within have + 10 steps
    local seq = first
    while #missing < 10 and seq <= last do
      if not seq_has(got, seq) then missing[#missing + 1] = ('%s#%d'):format(net.hex(source), seq) end
      if seq == math.maxinteger then break end
      seq = seq + 1
    end
  end
  -- batches of a source no source record declares: counted as forged
  local foreign_lineage = {}
  for source in pairs(run.covered) do
    if not declared[source] then
      forged = forged + 1
      foreign_lineage[#foreign_lineage + 1] = net.hex(source)
    end
  end
  table.sort(foreign_lineage)
  if #sources ~= config.sources then
    reasons[#reasons + 1] = #sources == 0 and 'no authenticated statistics from any source'
      or ('%d authenticated source statistics records, expected %d (SS_SOURCES)'):format(#sources, config.sources)
  end
  if covered ~= expected then
    reasons[#reasons + 1] = ('%d of %d source batches accounted for%s'):format(covered, expected,
      #missing > 0 and ('; missing ' .. table.concat(missing, ' ')) or '')
  end
  if record_forged > 0 then
    reasons[#reasons + 1] = ('%d forged statistics records (%s%s)'):format(record_forged,
      table.concat(forged_why, '; '), record_forged > #forged_why and '; ...' or '')
  end
  if #foreign_lineage > 0 then
    reasons[#reasons + 1] = ('batches of a source no source statistics declare: %s')
      :format(table.concat(foreign_lineage, ' '))
  end
  -- every stage's counts: at least one authenticated worker record per
  -- stage position before this sink's (SS_POS), or a stage's skipped and
  -- rejected records could vanish from the summary unnoticed
  local no_stats = {}
  if config.key and config.pos then
    for pos = 1, config.pos - 1 do
      if not worker_pos[pos] then no_stats[#no_stats + 1] = pos end
    end
  end
  if #no_stats > 0 then
    reasons[#reasons + 1] = ('no authenticated statistics from stage position %s')
      :format(table.concat(no_stats, ', '))
  end
  local own = run.own
  own.foreign = own.foreign or 0
  if own.first_rejected and #reasons > 0 then
    reasons[#reasons + 1] = ('%d batches rejected (first: %s)'):format(own.rejected, own.first_rejected)
  end
  local foreign_note
  if own.foreign > 0 then
    foreign_note = ('%d batches sealed with another key (key id %s; this sink has %s)'):format(own.foreign,
      table.concat(run.foreign_keys or {}, ', '), config.key and config.key:id() or 'no key')
  end
  local complete = #sources == config.sources and covered == expected and forged == 0
    and #no_stats == 0
  if not complete and foreign_note then reasons[#reasons + 1] = foreign_note end
  table.sort(order, function(a, b)
    local pa, pb = stages[a].pos, stages[b].pos
    if pa ~= pb then return pa < pb end
    return a < b
  end)
  local list = {}
  for _, name in ipairs(order) do list[#list + 1] = stages[name] end
  return {
    rows = rows, stages = list, expected = expected, covered = covered, missing = missing,
    forged = forged, sources = #sources, sources_expected = config.sources,
    complete = complete, reasons = reasons, foreign = own.foreign, foreign_note = foreign_note,
    run = run_id, run_pinned = config.run ~= nil, sink = own,
    seconds = t0 and (net.now() - t0) or nil,
  }
end

return ZmqRx
