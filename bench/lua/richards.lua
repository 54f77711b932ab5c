-- richards: Martin Richards' simulation of an operating system's task
-- scheduler (an idle task, a worker, two handlers, two devices passing
-- packets): method calls, table fields, linked lists. One iteration is the
-- classic run of 1000 idle-task turns, after which 2322 packets must have
-- been queued and tasks held 928 times; any other count is an error.
-- securestreams lua bench/lua/richards.lua N      (N iterations)
-- Used as a module (no argument) it returns run(n) -> "QUEUED HELD" totals.

local ID_IDLE, ID_WORKER, ID_HANDLER_A, ID_HANDLER_B, ID_DEVICE_A, ID_DEVICE_B = 0, 1, 2, 3, 4, 5
local KIND_DEVICE, KIND_WORK = 0, 1
local DATA_SIZE = 4
local COUNT, EXPECTED_QUEUED, EXPECTED_HELD = 1000, 2322, 928

-- task states: bits
local RUNNING, RUNNABLE, SUSPENDED, HELD = 0, 1, 2, 4
local SUSPENDED_RUNNABLE = SUSPENDED | RUNNABLE

---------------------------------------------------------------- packets
local Packet = {}
Packet.__index = Packet

local function new_packet(link, id, kind)
  return setmetatable({ link = link, id = id, kind = kind, a1 = 0, a2 = { 0, 0, 0, 0 } }, Packet)
end

-- append this packet to the end of `queue`; returns the queue's head
function Packet:append_to(queue)
  self.link = nil
  if queue == nil then return self end
  local last = queue
  while last.link ~= nil do last = last.link end
  last.link = self
  return queue
end

---------------------------------------------------------------- task control blocks
local Tcb = {}
Tcb.__index = Tcb

local function new_tcb(link, id, priority, queue, task)
  return setmetatable({ link = link, id = id, priority = priority, queue = queue, task = task,
                        state = queue == nil and SUSPENDED or SUSPENDED_RUNNABLE }, Tcb)
end

function Tcb:held_or_suspended()
  return (self.state & HELD) ~= 0 or self.state == SUSPENDED
end

function Tcb:run()
  local packet
  if self.state == SUSPENDED_RUNNABLE then
    packet = self.queue
    self.queue = packet.link
    self.state = self.queue == nil and RUNNING or RUNNABLE
  end
  return self.task:run(packet)
end

-- a packet arrives for this task while `current` runs: the task to run next
function Tcb:add_packet(packet, current)
  if self.queue == nil then
    self.queue = packet
    self.state = self.state | RUNNABLE
    if self.priority > current.priority then return self end
  else
    self.queue = packet:append_to(self.queue)
  end
  return current
end

---------------------------------------------------------------- the scheduler
local Scheduler = {}
Scheduler.__index = Scheduler

local function new_scheduler()
  return setmetatable({ queued = 0, held = 0, blocks = {}, list = nil, current = nil,
                        current_id = nil }, Scheduler)
end

function Scheduler:add(id, priority, queue, task)
  self.current = new_tcb(self.list, id, priority, queue, task)
  self.list = self.current
  self.blocks[id] = self.current
end

function Scheduler:schedule()
  self.current = self.list
  while self.current ~= nil do
    local tcb = self.current
    if tcb:held_or_suspended() then
      self.current = tcb.link
    else
      self.current_id = tcb.id
      self.current = tcb:run()
    end
  end
end

function Scheduler:release(id)
  local tcb = self.blocks[id]
  if tcb == nil then return nil end
  tcb.state = tcb.state & ~HELD
  if tcb.priority > self.current.priority then return tcb end
  return self.current
end

function Scheduler:hold_current()
  self.held = self.held + 1
  local tcb = self.current
  tcb.state = tcb.state | HELD
  return tcb.link
end

function Scheduler:suspend_current()
  local tcb = self.current
  tcb.state = tcb.state | SUSPENDED
  return tcb
end

function Scheduler:send(packet)
  local to = self.blocks[packet.id]
  if to == nil then return nil end
  self.queued = self.queued + 1
  packet.link = nil
  packet.id = self.current_id
  return to:add_packet(packet, self.current)
end

---------------------------------------------------------------- the tasks
-- idle: alternately releases the two devices, COUNT times
local IdleTask = {}
IdleTask.__index = IdleTask
function IdleTask:run(packet)
  local s = self.scheduler
  self.count = self.count - 1
  if self.count == 0 then return s:hold_current() end
  if self.seed & 1 == 0 then
    self.seed = self.seed >> 1
    return s:release(ID_DEVICE_A)
  end
  self.seed = (self.seed >> 1) ~ 0xD008
  return s:release(ID_DEVICE_B)
end

-- device: holds one packet, gives it back on its next turn
local DeviceTask = {}
DeviceTask.__index = DeviceTask
function DeviceTask:run(packet)
  local s = self.scheduler
  if packet == nil then
    local p = self.pending
    if p == nil then return s:suspend_current() end
    self.pending = nil
    return s:send(p)
  end
  self.pending = packet
  return s:hold_current()
end

-- worker: fills work packets and sends them to the handlers in turn
local WorkerTask = {}
WorkerTask.__index = WorkerTask
function WorkerTask:run(packet)
  local s = self.scheduler
  if packet == nil then return s:suspend_current() end
  self.handler = self.handler == ID_HANDLER_A and ID_HANDLER_B or ID_HANDLER_A
  packet.id = self.handler
  packet.a1 = 0
  local a2, v = packet.a2, self.letter
  for i = 1, DATA_SIZE do
    v = v + 1
    if v > 26 then v = 1 end
    a2[i] = v
  end
  self.letter = v
  return s:send(packet)
end

-- handler: takes work packets and device packets, sends one device packet per
-- datum of the work packet, then the work packet back
local HandlerTask = {}
HandlerTask.__index = HandlerTask
function HandlerTask:run(packet)
  local s = self.scheduler
  if packet ~= nil then
    if packet.kind == KIND_WORK then
      self.work = packet:append_to(self.work)
    else
      self.devices = packet:append_to(self.devices)
    end
  end
  local work = self.work
  if work ~= nil then
    local count = work.a1
    if count < DATA_SIZE then
      local dev = self.devices
      if dev ~= nil then
        self.devices = dev.link
        dev.a1 = work.a2[count + 1]
        work.a1 = count + 1
        return s:send(dev)
      end
    else
      self.work = work.link
      return s:send(work)
    end
  end
  return s:suspend_current()
end

local function task(class, fields)
  return setmetatable(fields, class)
end

---------------------------------------------------------------- one iteration
local function iteration()
  local s = new_scheduler()
  s:add(ID_IDLE, 0, nil, task(IdleTask, { scheduler = s, seed = 1, count = COUNT }))
  s.current.state = RUNNING

  local queue = new_packet(nil, ID_WORKER, KIND_WORK)
  queue = new_packet(queue, ID_WORKER, KIND_WORK)
  s:add(ID_WORKER, 1000, queue, task(WorkerTask, { scheduler = s, handler = ID_HANDLER_A, letter = 0 }))

  queue = new_packet(nil, ID_DEVICE_A, KIND_DEVICE)
  queue = new_packet(queue, ID_DEVICE_A, KIND_DEVICE)
  queue = new_packet(queue, ID_DEVICE_A, KIND_DEVICE)
  s:add(ID_HANDLER_A, 2000, queue, task(HandlerTask, { scheduler = s }))

  queue = new_packet(nil, ID_DEVICE_B, KIND_DEVICE)
  queue = new_packet(queue, ID_DEVICE_B, KIND_DEVICE)
  queue = new_packet(queue, ID_DEVICE_B, KIND_DEVICE)
  s:add(ID_HANDLER_B, 3000, queue, task(HandlerTask, { scheduler = s }))

  s:add(ID_DEVICE_A, 4000, nil, task(DeviceTask, { scheduler = s }))
  s:add(ID_DEVICE_B, 5000, nil, task(DeviceTask, { scheduler = s }))

  s:schedule()
  if s.queued ~= EXPECTED_QUEUED or s.held ~= EXPECTED_HELD then
    error(('richards: %d packets queued and %d holds, expected %d and %d'):format(
      s.queued, s.held, EXPECTED_QUEUED, EXPECTED_HELD))
  end
  return s.queued, s.held
end

local function run(n)
  local queued, held = 0, 0
  for _ = 1, n do
    local q, h = iteration()
    queued, held = queued + q, held + h
  end
  return ('%d %d'):format(queued, held)
end

local n = ...
if n then
  local t0 = os.clock()
  local result = run(math.tointeger(tonumber(n)) or error('richards: N must be an integer'))
  local cpu = os.clock() - t0
  print(result)
  -- scripts/bench-lua: the run's CPU seconds, without the interpreter's start
  if os.getenv('BENCH_CPU') then io.stderr:write(('cpu %.6f\n'):format(cpu)) end
end
return run
