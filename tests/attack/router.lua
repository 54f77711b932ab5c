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
--
-- FROM and TO bind hop 1 (its producer and consumer sides); FROM2 and TO2,
-- when set, hop 2. It prints "ready FROM TO [FROM2 TO2]" on stdout once
-- bound, serves one consumer per hop (the first to join), and exits 0 once
-- the last hop's consumer acknowledged the end of stream (1 after 60 s).
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

-- A hop: the sockets of one router, its producers and its one consumer.
local function new_hop(from, to)
  local h = { front = net.raw('router', from), back = net.raw('router', to), queue = {},
              producers = {}, nproducers = 0, eos = {}, neos = 0, credit = 0, tag = 0 }
  return h
end
local hops = { new_hop(env('FROM') or 'tcp://127.0.0.1:*', env('TO') or 'tcp://127.0.0.1:*') }
if env('FROM2') then hops[2] = new_hop(env('FROM2'), env('TO2')) end
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
  local d = dest(i)
  d.queue[#d.queue + 1] = m
end

-- Every producer of hop i sent its end of stream: one end of stream for the
-- consumer, statistics merged (the first of an id wins); its members are
-- the consumer it goes to, as a router lists them (made when delivered).
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
  local d = dest(i)
  d.queue[#d.queue + 1] = { eos = eos, stream = string.unpack('<I4', h.eos[1][1], 5) }
end

-- The end of stream m as delivered to hop h's consumer.
local function eos_frames(h, m)
  m.eos.members = { (string.unpack('<I8', h.consumer, 2)) }
  local hdr = string.pack('<BBHI4I8I8I4I4I8', 1, 2, 0, m.stream, 0x4854534f48, 0, 1, 0, 0)
  return hdr, '', net.encode(m.eos)
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
      if kind == JOIN and not h.consumer then
        h.consumer = b[1]
        h.back:send(h.consumer, link(WELCOME, 0, 0, 0))
      elseif kind == CREDIT and b[1] == h.consumer then
        h.credit = h.credit + n
      elseif kind == ACK and b[1] == h.consumer and t == h.eos_tag and i == #hops then
        done = true
      end
    end
  end
  if net.now() - last_beat > 0.1 then
    for _, h in ipairs(hops) do
      for p in pairs(h.producers) do h.front:send(p, link(HEARTBEAT, 0, 0, 0)) end
      if h.consumer then h.back:send(h.consumer, link(HEARTBEAT, 0, 0, 0)) end
    end
    last_beat = net.now()
  end
  for _, h in ipairs(hops) do
    -- what this hop delivers first (foreign batches, an old run's), then its queue
    local function next_list() return h.preload and #h.preload > 0 and h.preload or h.queue end
    local list = next_list()
    while h.consumer and h.credit > 0 and #list > 0 do
      local m = table.remove(list, 1)
      h.tag = h.tag + 1
      if m.eos then
        h.eos_tag = h.tag
        m[1], m[2], m[3] = eos_frames(h, m)
      end
      h.back:send(h.consumer, link(DELIVER, 0, 0, h.tag), m[1], m[2], m[3])
      h.credit = h.credit - 1
      idle = false
      list = next_list()
    end
  end
  if idle then
    -- nothing moved: wait a little on the first hop's producer side
    local f = hops[1].front:recv(2)
    if f then on_front(1, f) end
  end
end
os.exit(done and 0 or 1)
