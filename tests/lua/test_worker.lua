-- test_worker.lua - tests of the worker loop of lib/lua/zmq-rx.lua and its
-- exactly-once rules (docs/architecture.md, "Exactly-once results under
-- worker failure"), without sockets: a scripted consumer and a producer
-- that record every call drive the loop, with the stage made of a Lua chain
-- or wrapping a scripted enclave.
-- Run from the repository root: securestreams lua tests/lua/test_worker.lua [name-pattern]
-- Prints one line per failure (expected vs actual) and a closing count;
-- exits non-zero when a test failed.

local ZmqRx = require 'zmq-rx'
local net = require 'securestreams.net'
local config = ZmqRx.config

local here = (arg and arg[0] or ''):match('^(.*)[/\\][^/\\]*$') or '.'
package.path = here .. '/?.lua;' .. package.path
local T = require 'harness'
local test, eq, ok = T.test, T.eq, T.ok

---------------------------------------------------------------------------
-- fakes
---------------------------------------------------------------------------

local SOURCE = 0x5eed               -- the upstream producer and source of every batch
local WORKER = 0x77                 -- the worker under test
local TIMEOUT = {}                  -- a script step: nothing came before the timeout

-- A data batch: source batch `seq`, delivered with tag `seq` unless told.
local function batch(seq, o)
  o = o or {}
  return { kind = o.kind or 'data', tag = o.tag or seq, data = o.events or { seq },
           lineage = o.lineage or net.lineage(SOURCE, seq), origin = 1 + 10 * seq,
           flags = o.redelivered and net.REDELIVERED or 0, producer = o.producer or SOURCE,
           seq = o.seq or seq, why = o.why }
end

local function rejected(seq, o)
  o = o or {}
  o.kind, o.why = 'rejected', o.why or 'authentication failed (test)'
  return batch(seq, o)
end

local EOS_TAG = 1000
local function eos(o)
  o = o or {}
  return { kind = 'eos', tag = EOS_TAG, flags = o.late and net.LATE or 0,
           data = { members = { SOURCE }, stats = { [net.hex(SOURCE)] = { stage = 'source', out = 9 } } } }
end

local function covers(lineage)
  local set = {}
  for _, id in ipairs(net.lineage_ids(lineage)) do set[#set + 1] = id[2] end
  table.sort(set)
  return set
end

-- A consumer that plays `script` and a producer that records; `calls`
-- lists every call both received, in order. The consumer checks the first
-- rule itself: a batch some output covers is acknowledged only once the
-- producer has reported that output receipted.
local function rig(script)
  local calls = {}
  local p = { outputs = {}, receipted_n = 0, seq = 0, eos = nil }
  local c = { acks = {} }
  local pos = 0

  local function record(...) calls[#calls + 1] = table.concat({ ... }, ' ') end

  function p:publish(writer, lineage, origin)
    local out = { pubseq = #self.outputs, count = writer:count(), covers = covers(lineage), origin = origin }
    self.outputs[#self.outputs + 1] = out
    self.seq = self.seq + 1
    record('publish', out.pubseq)
    return out.pubseq
  end
  function p:publish_raw(header, lineage, payload)
    local out = { pubseq = #self.outputs, header = header, covers = covers(lineage), payload = payload }
    self.outputs[#self.outputs + 1] = out
    record('publish', out.pubseq)
    return out.pubseq
  end
  function p:publish_eos(t)
    ok(self.eos == nil, 'one end of stream')
    self.eos = t
    record('publish_eos')
  end
  function p:receipted() return self.receipted_n end
  function p:service() end
  function p:drain()       -- returns once downstream has receipted everything
    self.receipted_n = #self.outputs
    record('drain')
  end
  function p:take_seq()
    local s = self.seq
    self.seq = s + 1
    return s
  end

  local function next_step()
    while true do
      pos = pos + 1
      local step = script[pos]
      if step == nil then error('the worker read past the end of its script', 0) end
      if type(step) == 'function' then
        step(p, c, calls)
      else
        return step
      end
    end
  end

  function c:recv()
    local d = next_step()
    if d == TIMEOUT then return nil end
    if d.kind == 'bad' then return 'bad', d.tag, d.why end
    if d.kind == 'rejected' then
      return 'rejected', d.tag, d.why, d.lineage, d.origin, d.flags, d.producer, d.seq
    end
    return d.kind, d.tag, d.data, d.lineage, d.origin, d.flags, d.producer, d.seq
  end
  function c:recv_raw()
    local d = next_step()
    if d == TIMEOUT then return nil end
    return d.tag, d.header, d.lineage, d.payload, d.flags
  end
  c.rejects = {}
  function c:ack(tag, rejected)
    if rejected then c.rejects[#c.rejects + 1] = tag end
    for _, out in ipairs(p.outputs) do
      for _, seq in ipairs(out.covers) do
        if seq == tag and out.pubseq >= p.receipted_n then
          error(('batch %d acknowledged before output %d covering it was receipted (receipted: %d)')
            :format(tag, out.pubseq, p.receipted_n), 0)
        end
      end
    end
    self.acks[#self.acks + 1] = tag
    record('ack', tag)
  end
  return { consumer = c, producer = p, calls = calls }
end

local function stream() return ZmqRx.Subject.fromZmqSocket('tcp://127.0.0.1:1') end
local function identity() return stream():map(function(x) return x end) end
local function sum() return stream():reduce(function(a, x) return a + x end, 0) end

-- Runs a chain stage over the script; returns the rig and the stage.
local function run(chain, script, group)
  config.group = group or 32
  local r = rig(script)
  local stage = ZmqRx.chain_stage(chain, r.producer)
  ZmqRx.worker_loop(r.consumer, r.producer, stage, WORKER)
  stage.close()
  return r, stage
end

local function coverage(r)
  local list = {}
  for i, out in ipairs(r.producer.outputs) do list[i] = out.covers end
  return list
end

local function counts(r)
  local list = {}
  for i, out in ipairs(r.producer.outputs) do list[i] = out.count end
  return list
end

-- The calls recorded so far, for a script step to look at.
local function snapshot(into)
  return function(_, c) into[#into + 1] = table.move(c.acks, 1, #c.acks, 1, {}) end
end

---------------------------------------------------------------------------
-- acknowledgement
---------------------------------------------------------------------------

test('no input is acknowledged before the output covering it is receipted', function()
  local seen = {}
  local r = run(identity(), {
    batch(1), batch(2), batch(3), snapshot(seen),
    function(p) p.receipted_n = 1 end, TIMEOUT, snapshot(seen),
    function(p) p.receipted_n = 3 end, TIMEOUT, snapshot(seen),
    eos(),
  })
  eq(seen, { {}, { 1 }, { 1, 2, 3 } }, 'acknowledged after each receipt')
  eq(coverage(r), { { 1 }, { 2 }, { 3 } }, 'outputs')
end)

test('acknowledgements follow the outputs in order once receipted', function()
  local r = run(sum(), {
    batch(1), batch(2), batch(3), batch(4), batch(5),
    function(p, c) eq(c.acks, {}, 'before any receipt') end,
    function(p) p.receipted_n = 2 end, batch(6),
    eos(),
  }, 2)
  eq(coverage(r), { { 1, 2 }, { 3, 4 }, { 5, 6 } }, 'outputs')
  eq(r.consumer.acks, { 1, 2, 3, 4, 5, 6, EOS_TAG }, 'acknowledgements')
end)

test('the end of stream is acknowledged last, after everything is receipted', function()
  local r = run(sum(), { batch(1), batch(2), eos() }, 32)
  eq(r.calls, { 'publish 0', 'drain', 'ack 1', 'ack 2', 'publish_eos', 'drain', 'ack 1000' }, 'calls')
end)

---------------------------------------------------------------------------
-- grouping
---------------------------------------------------------------------------

test('a stateless stage publishes exactly one output per input batch, empty or not', function()
  local chain = stream():filter(function(x) return x % 2 == 0 end)
  local r = run(chain, { batch(1), batch(2), batch(3), batch(4, { events = {} }), eos() }, 32)
  eq(coverage(r), { { 1 }, { 2 }, { 3 }, { 4 } }, 'outputs')
  eq(counts(r), { 0, 1, 0, 0 }, 'events in each output')
  eq(r.producer.outputs[2].origin, 21, 'origin of a single batch kept')
end)

test('a stateful stage groups up to config.group batches', function()
  local r = run(sum(), {
    batch(1), batch(2), batch(3), batch(4), batch(5), batch(6), batch(7), eos(),
  }, 3)
  eq(coverage(r), { { 1, 2, 3 }, { 4, 5, 6 }, { 7 } }, 'outputs')
  eq(counts(r), { 1, 1, 1 }, 'one partial result each')
  eq(r.producer.outputs[1].origin, 0, 'a group of several batches has no origin')
end)

test('a stateful stage flushes its open group when no batch came', function()
  local r = run(sum(), { batch(1), batch(2), TIMEOUT, batch(3), eos() }, 32)
  eq(coverage(r), { { 1, 2 }, { 3 } }, 'outputs')
end)

test('a redelivered batch closes the open group and is published alone', function()
  local r, stage = run(sum(), {
    batch(1), batch(2), batch(3, { redelivered = true }), batch(4), batch(5), eos(),
  }, 32)
  eq(coverage(r), { { 1, 2 }, { 3 }, { 4, 5 } }, 'outputs')
  eq(stage.stats.redelivered, 1, 'redelivered counted')
end)

test('a redelivered batch is alone in a stateless stage too', function()
  local r = run(identity(), { batch(1, { redelivered = true }), batch(2), eos() }, 32)
  eq(coverage(r), { { 1 }, { 2 } }, 'outputs')
end)

---------------------------------------------------------------------------
-- batches that are not processed
---------------------------------------------------------------------------

test('a rejected, replayed or refused batch is acknowledged at once and produces nothing', function()
  local seen = {}
  local r, stage = run(sum(), {
    batch(1),
    rejected(2, { redelivered = true }),
    batch(1, { tag = 3 }),                                   -- source batch 1 again: a replay
    { kind = 'bad', tag = 4, why = 'batch payload is not a MessagePack array of 1 events' },
    snapshot(seen),
    batch(5),
    eos(),
  }, 32)
  eq(seen, { { 2, 3, 4 } }, 'acknowledged before anything was receipted')
  eq(coverage(r), { { 1, 5 } }, 'outputs')
  eq(stage.stats.rejected, 2, 'rejected')
  eq(stage.stats.refused, 1, 'refused')
  eq(stage.stats.batches, 2, 'batches processed')
  eq(stage.stats.redelivered, 1, 'a rejected redelivered batch still counts as redelivered')
  eq(r.consumer.acks, { 2, 3, 4, 1, 5, EOS_TAG }, 'acknowledgements')
  eq(r.consumer.rejects, { 2, 3, 4 }, 'flagged REJECTED, so the router forgets their lineage claims')
end)

-- What two map workers make of one source batch a hostile router gave
-- both, delivered into one group: another producer and sequence number (the
-- replay window passes it), the same lineage.
local MAPPER_B = 0xb0b
local function twin(seq, tag, o)
  o = o or {}
  o.tag, o.producer, o.seq, o.events = tag, MAPPER_B, o.seq or seq, o.events or { 1000 * seq }
  return batch(seq, o)
end

test('a batch whose lineage overlaps the open group is rejected, never counted twice', function()
  local r, stage = run(sum(), {
    batch(1), batch(2),
    twin(2, 12),                                                    -- the same source batch 2
    twin(3, 13, { lineage = net.lineage_union({ net.lineage(SOURCE, 1), net.lineage(SOURCE, 3) }) }),
    batch(4),
    eos(),
  }, 32)
  eq(coverage(r), { { 1, 2, 4 } }, 'one partial, each source batch once')
  eq(r.producer.outputs[1].count, 1, 'one partial result')
  eq(r.consumer.rejects, { 12, 13 }, 'acknowledged REJECTED')
  eq(stage.stats.rejected, 2, 'rejected')
  eq(stage.stats.batches, 3, 'batches processed')
  eq(stage.stats['in'], 3, 'events of the rejected batches never ran')
  ok(stage.stats.first_rejected:find(('batch 2 of producer %s: lineage %s#2 already in this partial')
    :format(net.hex(MAPPER_B), net.hex(SOURCE)), 1, true), 'named: ' .. tostring(stage.stats.first_rejected))
end)

test('the same source batch in the next group is left to the routers and the sink (control)', function()
  local r, stage = run(sum(), { batch(1), batch(2), TIMEOUT, twin(2, 12), eos() }, 32)
  eq(coverage(r), { { 1, 2 }, { 2 } }, 'outputs')
  eq(r.consumer.rejects, {}, 'nothing rejected')
  eq(stage.stats.rejected, 0, 'rejected')
end)

test('a redelivered batch is a partial of its own: its lineage meets no open group', function()
  local r, stage = run(sum(), { batch(1), batch(2), twin(2, 12, { redelivered = true }), batch(3), eos() }, 32)
  eq(coverage(r), { { 1, 2 }, { 2 }, { 3 } }, 'outputs')
  eq(stage.stats.rejected, 0, 'rejected')
end)

test('a lineage union refuses an id named twice; lineage_overlap finds it', function()
  local a, b, c = net.lineage(SOURCE, 1), net.lineage(SOURCE, 2), net.lineage(SOURCE, 3)
  eq(net.lineage_union({ c, a, b }), a .. b .. c, 'disjoint parts: the sorted union')
  local fine, err = pcall(net.lineage_union, { a .. b, b .. c })
  ok(not fine and tostring(err):find('1 source batch ids named more than once in 2 parts', 1, true),
     'overlapping parts: ' .. tostring(err))
  eq({ net.lineage_overlap(a .. b, b .. c) }, { SOURCE, 2 }, 'overlap found')
  eq({ net.lineage_overlap(b .. c, a .. b .. c) }, { SOURCE, 2 }, 'the first of the first lineage')
  eq({ net.lineage_overlap(a .. b .. c, c) }, { SOURCE, 3 }, 'a long one against a short one')
  eq({ net.lineage_overlap(a, b .. c) }, { nil }, 'none')
  eq({ net.lineage_overlap('', a) }, { nil }, 'empty')
end)

---------------------------------------------------------------------------
-- end of stream
---------------------------------------------------------------------------

test('the end of stream flushes the open group and publishes the merged statistics', function()
  local r, stage = run(sum(), { batch(1), batch(2, { redelivered = true }), batch(3), eos() }, 32)
  eq(coverage(r), { { 1 }, { 2 }, { 3 } }, 'outputs')
  local e = r.producer.eos
  ok(e, 'end of stream published')
  eq(e.members, { SOURCE }, 'members as received')
  eq(e.stats[net.hex(SOURCE)], { stage = 'source', out = 9 }, 'upstream statistics kept')
  local mine = e.stats[net.hex(WORKER)]
  ok(mine == stage.stats, 'the worker statistics under its id')
  eq({ mine['in'], mine.out, mine.batches, mine.redelivered, mine.skipped }, { 3, 3, 3, 1, 0 }, 'counts')
  eq(r.calls[#r.calls], 'ack 1000', 'end of stream acknowledged last')
end)

test('an end of stream flagged LATE is forwarded like any other (a router may lie)', function()
  local r = run(identity(), { batch(1), eos({ late = true }) }, 32)
  ok(r.producer.eos ~= nil, 'end of stream forwarded')
  eq(r.producer.eos.members, { SOURCE }, 'members as received')
  eq(r.calls, { 'publish 0', 'drain', 'ack 1', 'publish_eos', 'drain', 'ack 1000' }, 'calls')
  eq(r.consumer.rejects, {}, 'nothing acknowledged REJECTED')
end)

---------------------------------------------------------------------------
-- the enclave stage, over a scripted enclave
---------------------------------------------------------------------------

-- A header whose second byte says the type: 1 DATA, 2 EOS.
local function header(kind) return '\1' .. (kind == 'eos' and '\2' or '\1') .. ('\0'):rep(38) end
-- MessagePack {members = [], stats = {}}
local EMPTY_EOS = '\x82\xa7members\x90\xa5stats\x80'

local function raw(d)
  if d == TIMEOUT or type(d) == 'function' then return d end
  d.header = header(d.kind)
  d.payload = d.kind == 'eos' and (d.raw_payload or EMPTY_EOS) or ('sealed ' .. d.seq)
  return d
end

-- An enclave that answers batch `seq` with what `answers[seq]` says:
-- 'rejected', 'nothing', or (default) an output covering it.
local function enclave(stateful, answers)
  local e = { calls = {}, open = {} }
  local function output(list)
    local ids = {}
    for i, q in ipairs(list) do ids[i] = net.lineage(SOURCE, q) end
    return { output = true, header = 'h', lineage = net.lineage_union(ids), payload = 'p', message = '' }
  end
  function e:stateful() return stateful end
  function e:batch(_, lineage, _, seq, redelivered)
    local q = net.lineage_ids(lineage)[1][2]
    self.calls[#self.calls + 1] = ('batch %d seq %d%s'):format(q, seq, redelivered and ' redelivered' or '')
    local a = answers[q]
    if a == 'rejected' then
      return { output = false, rejected = true, message = 'rejected batch ' .. q }
    end
    if stateful then
      self.open[#self.open + 1] = q
      return { output = false, rejected = false, message = '' }
    end
    if a == 'nothing' then return { output = false, rejected = false, message = '' } end
    return output({ q })
  end
  function e:flush(seq)
    self.calls[#self.calls + 1] = ('flush seq %d'):format(seq)
    local list = self.open
    self.open = {}
    if #list == 0 then return { output = false, message = '' } end
    return output(list)
  end
  function e:finish(id, seq)
    self.calls[#self.calls + 1] = ('finish %s seq %d'):format(id, seq)
    return 'sealed statistics'
  end
  function e:close() self.calls[#self.calls + 1] = 'close' end
  return e
end

local function run_enclave(enc, script, group)
  config.group = group or 32
  for i, d in ipairs(script) do script[i] = raw(d) end
  local r = rig(script)
  local stage = ZmqRx.enclave_stage(enc, r.producer)
  ZmqRx.worker_loop(r.consumer, r.producer, stage, WORKER)
  stage.close()
  return r
end

test('enclave stage, stateless: one output per batch, rejected and empty ones acknowledged at once', function()
  local enc = enclave(false, { [2] = 'rejected', [3] = 'nothing' })
  local seen = {}
  local r = run_enclave(enc, { batch(1), batch(2), batch(3), snapshot(seen), batch(4), eos() })
  eq(seen, { { 2, 3 } }, 'acknowledged before anything was receipted')
  eq(coverage(r), { { 1 }, { 4 } }, 'outputs')
  eq(r.consumer.acks, { 2, 3, 1, 4, EOS_TAG }, 'acknowledgements')
  eq(r.consumer.rejects, { 2 }, 'only the rejected one flagged REJECTED')
  eq(enc.calls, { 'batch 1 seq 0', 'batch 2 seq 1', 'batch 3 seq 2', 'batch 4 seq 3',
                  'finish ' .. net.hex(WORKER) .. ' seq 4', 'close' }, 'enclave calls')
  eq(r.producer.eos.stats[net.hex(WORKER)], { sealed = 'sealed statistics', n = 4 }, 'sealed record')
end)

test('enclave stage, stateful: groups, a redelivered batch alone, flushed at the end', function()
  local enc = enclave(true, { [4] = 'rejected' })
  local r = run_enclave(enc, {
    batch(1), batch(2), batch(3), batch(4, { redelivered = true }), batch(5, { redelivered = true }),
    batch(6), eos(),
  }, 2)
  eq(coverage(r), { { 1, 2 }, { 3 }, { 5 }, { 6 } }, 'outputs')
  eq(enc.calls, { 'batch 1 seq 0', 'batch 2 seq 1', 'flush seq 2', 'batch 3 seq 3',
                  'flush seq 4', 'batch 4 seq 5 redelivered', 'batch 5 seq 6 redelivered',
                  'flush seq 7', 'batch 6 seq 8', 'flush seq 9', 'finish ' .. net.hex(WORKER) .. ' seq 10',
                  'close' }, 'enclave calls')
  eq(r.consumer.acks, { 4, 1, 2, 3, 5, 6, EOS_TAG }, 'acknowledgements')
end)

test('enclave stage: a LATE end of stream is forwarded like any other', function()
  local enc = enclave(false, {})
  local r = run_enclave(enc, { batch(1), eos({ late = true }) })
  ok(r.producer.eos ~= nil, 'end of stream forwarded')
  eq(enc.calls, { 'batch 1 seq 0', 'finish ' .. net.hex(WORKER) .. ' seq 1', 'close' }, 'enclave calls')
end)

---------------------------------------------------------------------------
-- the summary
---------------------------------------------------------------------------

test('the summary adds up redelivered batches; a record without them counts 0', function()
  local saved = ZmqRx.last_run
  ZmqRx.last_run = {
    own = { ['in'] = 0, skipped = 0, refused = 0, rejected = 0, redelivered = 0 },
    covered = {},
    stats = {
      a = { stage = 'mapper', pos = 1, ['in'] = 5, out = 5, redelivered = 2 },
      b = { stage = 'mapper', pos = 1, ['in'] = 3, out = 3, redelivered = 1 },
      c = { stage = 'reducer', pos = 2, ['in'] = 8, out = 1 },          -- an older enclave's record
    },
  }
  local s = ZmqRx.summary()
  ZmqRx.last_run = saved
  eq({ s.stages[1].stage, s.stages[1].workers, s.stages[1].redelivered }, { 'mapper', 2, 3 }, 'mapper')
  eq({ s.stages[2].stage, s.stages[2].redelivered }, { 'reducer', 0 }, 'reducer')
end)

test('the summary does work bounded by what was received, not by what a record declares', function()
  local saved = ZmqRx.last_run
  local got = {}
  for q = 0, 199 do got[q >> 6] = (got[q >> 6] or 0) | (1 << (q & 63)) end
  ZmqRx.last_run = {
    own = { ['in'] = 0, skipped = 0, refused = 0, rejected = 0, redelivered = 0 },
    covered = { [5] = got },
    stats = { s = { stage = 'source', pos = 0, out = 200, batches = 1 << 40, lineage_source = 5 } },
  }
  local s = ZmqRx.summary()   -- a loop over the declared 2^40 batches would never return
  ZmqRx.last_run = saved
  eq({ s.covered, s.expected, s.complete }, { 200, 1 << 40, false }, 'counts')
  eq({ #s.missing, s.missing[1] }, { 10, net.hex(5) .. '#200' }, 'the first missing ones named')
end)

test('an end-of-stream map is decoded within the bounds routers read it under', function()
  local members = {}
  for i = 1, 1000 do members[i] = i end
  local t = net.decode(net.encode({ members = members, stats = {} }))
  eq(#t.members, 1000, 'an honest map')
  -- 2^18 one-byte values and one more: refused before any table is built
  local bomb = '\x81\xa7members\xdd' .. string.pack('>I4', (1 << 18) + 1) .. ('\x01'):rep((1 << 18) + 1)
  local ok_, err = pcall(net.decode, bomb)
  ok(not ok_, 'the bomb refused')
  ok(tostring(err):find('more than 262144 elements in all', 1, true), 'named: ' .. tostring(err))
end)

---------------------------------------------------------------------------

T.run('worker')
