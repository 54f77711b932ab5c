-- A hostile router: what the host of one or two routers can do. It binds
-- the routers' ROUTER sockets in place of `securestreams router` and speaks
-- the protocol of docs/protocol.md (JOIN/WELCOME, CREDIT, PUBLISH/RECEIPT,
-- DELIVER/ACK, HEARTBEAT, EOS) with real producers and consumers. It holds
-- no key: it can only move, drop, keep and replay what passes through it,
-- and seal under a key of its own.
--
--   MODE=relay               honest: every message to its own consumers (the control)
--   MODE=capture             relay, and keep every batch and the end of stream in
--                            CAPTURE (a directory) for a later run
--   MODE=old-run             drop this run's batches; deliver those kept in CAPTURE
--                            instead, and the end of stream kept there
--   MODE=swap-source-record  drop every batch; in the end of stream, put the record
--                            in RECORD (a file: id, n, sealed) in place of the
--                            source's (the source is named by the batches' lineage)
--   MODE=skip-stage          two hops: what the first stage publishes (hop 1's
--                            front) goes straight to the sink (hop 2's back); the
--                            second stage gets nothing
--   MODE=drop-worker-stats   relay, but keep only the source's record in the end of
--                            stream: every stage's counts (skipped, rejected) vanish
--   MODE=foreign-key         deliver FOREIGN (default 12) batches sealed with the key
--                            in KEY (the attacker's own) before the real stream,
--                            made at position POS
--   MODE=dup-group           two hops: hop 1 delivers every batch to EVERY consumer
--                            (each stage-1 worker gets each source batch, as a
--                            normal delivery); hop 2 holds what stage 1 publishes
--                            until its end of stream, then delivers it sorted by
--                            lineage, so the outputs of one source batch come next
--                            to each other, into one group of a stateful stage 2
--
-- FROM and TO bind hop 1 (its producer and consumer sides); FROM2 and TO2,
-- when set, hop 2. It prints "ready FROM TO [FROM2 TO2]" on stdout once
-- bound. Each hop serves every consumer that joins: a batch goes to one of
-- them (dup-group's hop 1: to all), the end of stream to each, listing them
-- all as members. It exits 0 once every consumer of the last hop
-- acknowledged the end of stream (1 after 60 s).
local net = require 'securestreams.net'
local mode = os.getenv('MODE') or 'relay'
local env = os.getenv

local JOIN, WELCOME, CREDIT, PUBLISH, RECEIPT, DELIVER, ACK, HEARTBEAT = 1, 2, 3, 4, 5, 6, 7, 8
local function link(kind, flags, n, tag) return string.pack('<BBHI4I8', 1, kind, flags, n, tag) end
local function unlink(f)
  local _, kind, flags, n, tag = string.unpack('<BBHI4I8', f)
  return kind, flags, n, tag
end

local function read_file(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('a')
  f:close()
  return s
end
local function write_file(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end

-- A hop: the sockets of one router, its producers and its consumers (each
-- { id, credit, queue (its own), eos_tag, acked }), its shared queue, and
-- `final`, the end of stream once every producer sent one.
local function new_hop(from, to)
  local h = { front = net.raw('router', from), back = net.raw('router', to), queue = {},
              producers = {}, nproducers = 0, eos = {}, consumers = {}, tag = 0, hold = {} }
  return h
end
local hops = { new_hop(env('FROM') or 'tcp://127.0.0.1:*', env('TO') or 'tcp://127.0.0.1:*') }
if env('FROM2') then hops[2] = new_hop(env('FROM2'), env('TO2')) end
assert(mode ~= 'dup-group' or #hops == 2, 'dup-group: two hops (FROM2 and TO2)')
local ready = {}
for _, h in ipairs(hops) do
  ready[#ready + 1] = h.front:endpoint()
  ready[#ready + 1] = h.back:endpoint()
end
print('ready ' .. table.concat(ready, ' '))
io.stdout:flush()

-- Where a hop's input goes: its own back, or (skip-stage) the last hop's.
local function dest(i) return mode == 'skip-stage' and hops[#hops] or hops[i] end

local capture, captured = env('CAPTURE'), 0
local replay = {}                               -- old-run: the batches kept
if mode == 'old-run' then
  for i = 1, math.huge do
    local f = io.open(('%s/batch.%d'):format(capture, i), 'rb')
    if not f then break end
    local s = f:read('a')
    f:close()
    local hdr, lineage, payload = net.split_batch(s)
    replay[#replay + 1] = { hdr, lineage, payload }
  end
  hops[#hops].preload = replay
end

-- foreign-key: batches of the attacker's own key, ahead of everything
if mode == 'foreign-key' then
  local key = net.key(assert(env('KEY'), 'KEY: the attacker key file'))
  local producer, run = net.new_id(), net.new_run()
  local pos = tonumber(env('POS') or '1')
  local list = {}
  for i = 1, tonumber(env('FOREIGN') or '12') do
    local s = net.seal_batch(key, { 'a line of the attacker ' .. i }, producer, i - 1,
      pos == 0 and { run = run, source = true } or { run = run, pos = pos })
    local hdr, lineage, payload = net.split_batch(s)
    list[#list + 1] = { hdr, lineage, payload }
  end
  hops[1].preload = list
end

-- The source's id: the lineage source of the batches seen (swap-source-record,
-- drop-worker-stats).
local source_id

local function on_batch(i, m)
  if #m[2] >= 16 then source_id = string.unpack('<I8', m[2]) end
  if mode == 'capture' then
    captured = captured + 1
    write_file(('%s/batch.%d'):format(capture, captured),
      m[1] .. string.pack('<I4', #m[2]) .. m[2] .. m[3])
  end
  if mode == 'old-run' or mode == 'swap-source-record' then return end
  if mode == 'dup-group' then
    if i == 1 then
      for _, c in ipairs(hops[1].consumers) do c.queue[#c.queue + 1] = m end   -- to EVERY consumer
    else
      hops[2].hold[#hops[2].hold + 1] = m
    end
    return
  end
  local d = dest(i)
  d.queue[#d.queue + 1] = m
end

-- Every producer of hop i sent its end of stream: one end of stream for the
-- consumers, statistics merged (the first of an id wins); its members are
-- the consumers, as a router lists them (made when delivered).
local function end_of_stream(i)
  local h = hops[i]
  local stats = {}
  for _, e in ipairs(h.eos) do
    local t = net.decode(e[3])
    for id, rec in pairs(t.stats or {}) do
      if stats[id] == nil then stats[id] = rec end
    end
  end
  local eos = { members = {}, stats = stats }
  if mode == 'capture' then write_file(capture .. '/eos', net.encode(eos)) end
  if mode == 'old-run' and i == #hops then eos = net.decode(read_file(capture .. '/eos')) end
  if mode == 'drop-worker-stats' then
    for id in pairs(stats) do
      if not source_id or id ~= net.hex(source_id) then stats[id] = nil end
    end
  end
  if mode == 'swap-source-record' then
    local rec = net.decode(read_file(assert(env('RECORD'), 'RECORD: the record file')))
    if source_id then stats[net.hex(source_id)] = nil end
    stats[rec.id] = { sealed = rec.sealed, n = rec.n }
  end
  if mode == 'dup-group' and i == 2 then
    -- what stage 1 made, one source batch's outputs next to each other
    table.sort(h.hold, function(a, b)
      if a[2] ~= b[2] then return a[2] < b[2] end
      return a[1] < b[1]
    end)
    table.move(h.hold, 1, #h.hold, #h.queue + 1, h.queue)
    io.stderr:write(('[hostile router] hop 2: delivering %d held batches, sorted by lineage\n'):format(#h.hold))
    h.hold = {}
  end
  local d = dest(i)
  d.final = { eos = eos, stream = string.unpack('<I4', h.eos[1][1], 5) }
end

-- The end of stream m as delivered to hop h's consumers.
local function eos_frames(h, m)
  local members = {}
  for _, c in ipairs(h.consumers) do members[#members + 1] = (string.unpack('<I8', c.id, 2)) end
  m.eos.members = members
  local hdr = string.pack('<BBHI4I8I8I4I4I8', 1, 2, 0, m.stream, 0x4854534f48, 0, #members, 0, 0)
  return hdr, '', net.encode(m.eos)
end

-- The next message for consumer c of hop h: its own queue, then what the hop
-- delivers first (foreign batches, an old run's), then the shared queue,
-- then the end of stream (once).
local function next_message(h, c)
  if #c.queue > 0 then return table.remove(c.queue, 1) end
  if h.preload and #h.preload > 0 then return table.remove(h.preload, 1) end
  if #h.queue > 0 then return table.remove(h.queue, 1) end
  if h.final and not c.eos_tag then return h.final end
end

local function find_consumer(h, id)
  for _, c in ipairs(h.consumers) do
    if c.id == id then return c end
  end
end

-- Every consumer of the last hop acknowledged its end of stream.
local function all_acked()
  local cs = hops[#hops].consumers
  for _, c in ipairs(cs) do
    if not c.acked then return false end
  end
  return #cs > 0
end

-- A message on hop i's producer side.
local function on_front(i, f)
  local h = hops[i]
  local kind, _, _, t = unlink(f[2])
  if kind == JOIN then
    if not h.producers[f[1]] then h.nproducers = h.nproducers + 1 end
    h.producers[f[1]] = true
    h.front:send(f[1], link(WELCOME, 0, 0, 0))
  elseif kind == PUBLISH then
    h.front:send(f[1], link(RECEIPT, 0, 0, t))
    local m = { f[3], f[4], f[5] }
    if m[1]:byte(2) == 2 then
      h.eos[#h.eos + 1] = m
      if #h.eos == h.nproducers then end_of_stream(i) end
    else
      on_batch(i, m)
    end
  end
end

local done, deadline, last_beat = false, net.now() + 60, 0
while not done and net.now() < deadline do
  local idle = true
  for i, h in ipairs(hops) do
    local f = h.front:recv(0)
    if f then
      idle = false
      on_front(i, f)
    end
    local b = h.back:recv(0)
    if b then
      idle = false
      local kind, _, n, t = unlink(b[2])
      local c = find_consumer(h, b[1])
      if kind == JOIN and not c then
        h.consumers[#h.consumers + 1] = { id = b[1], credit = 0, queue = {} }
        h.back:send(b[1], link(WELCOME, 0, 0, 0))
      elseif kind == CREDIT and c then
        c.credit = c.credit + n
      elseif kind == ACK and c and t == c.eos_tag and i == #hops then
        c.acked = true
        done = all_acked()
      end
    end
  end
  if net.now() - last_beat > 0.1 then
    for _, h in ipairs(hops) do
      for p in pairs(h.producers) do h.front:send(p, link(HEARTBEAT, 0, 0, 0)) end
      for _, c in ipairs(h.consumers) do h.back:send(c.id, link(HEARTBEAT, 0, 0, 0)) end
    end
    last_beat = net.now()
  end
  for _, h in ipairs(hops) do
    -- one message to each consumer with credit in turn, while any moves
    local moved = true
    while moved do
      moved = false
      for _, c in ipairs(h.consumers) do
        local m = c.credit > 0 and next_message(h, c)
        if m then
          h.tag = h.tag + 1
          local f1, f2, f3 = m[1], m[2], m[3]
          if m.eos then
            c.eos_tag = h.tag
            f1, f2, f3 = eos_frames(h, m)
          end
          h.back:send(c.id, link(DELIVER, 0, 0, h.tag), f1, f2, f3)
          c.credit = c.credit - 1
          moved, idle = true, false
        end
      end
    end
  end
  if idle then
    -- nothing moved: wait a little on the first hop's producer side
    local f = hops[1].front:recv(2)
    if f then on_front(1, f) end
  end
end
os.exit(done and 0 or 1)
