--[==[
rx.lua - reactive streams for SecureStreams scripts (Lua 5.4).

The module returns a table Rx with Rx.Observable, Rx.Observer, Rx.Subject,
Rx.Subscription and Rx.util. Its API follows RxLua (bjornbytes/RxLua), so
scripts written against RxLua, like the SecureStreams seed's listings, run
unchanged. It is our own implementation, written for a stream processor:
user callbacks run once per event, millions of times, so the per-event path
of every operator is one closure call and one pcall, with no table or
closure created per event.

How it works. Subscribing an operator chain creates one Observer per stage.
A producer calls its observer's onNext; each operator calls the next stage's
_onNext directly after checking that stage's `stopped` flag. An operator that
stops (an error, take reaching its count, an unsubscription downstream) sets
`stopped` on the observer it gave to its source, so a synchronous producer
(fromRange, fromTable, a file) notices and stops producing.

Errors. A user callback given to an operator (map, filter, reduce, scan,
flatMap, tap, takeWhile, skipWhile, count's predicate,
distinctUntilChanged's comparator, and the arithmetic of
sum/min/max/average/pluck) runs under pcall. Its error goes to the
subscriber's onError and the stream stops for that subscriber, as RxLua's
util.tryWithObserver does. A subscriber without onError gets the default
one, which raises the error (level 0: the message is not prefixed).
Errors raised by the subscriber's own onNext/onError/onCompleted are not
caught: they propagate to whoever pushed the event (the host). (RxLua's
pcall around a whole operator step also catches errors of the stages
after it; ours covers the user callback only, so each error is charged
to the operator that raised it.)

Deliberate differences from RxLua:
 (a) reduce and scan with a table seed start each subscription from a deep
     copy of the seed (RxLua reuses the seed table, so a second
     subscription would continue from the accumulator the first one
     mutated). Hosts subscribe the same chain once per group of batches.
 (b) Rx.util.onUserError: a hook, nil by default. When it is a function,
     an error raised by a user callback inside an operator first calls
     hook(err, operatorName) ('map', 'filter', 'reduce', ...). If the hook
     returns true, the event is skipped and the stream goes on (reduce and
     scan keep the accumulator they had before the failing call; changes
     the callback made in place to a table accumulator before failing are
     not undone); otherwise the error reaches onError as above. A host
     with an error policy of "skip" uses it to count and log bad records.
 (c) Every Observable has a boolean field `stateful`: true when it or any
     operator upstream keeps state across events (reduce, scan, distinct,
     distinctUntilChanged, buffer, count, sum, min, max, average, take,
     skip, takeWhile, skipWhile, first, last, zip). And a field `root`: the
     observable the chain starts from (a source's root is itself), so a
     host can find the source of a chain built by user code.
 (d) reduce without a seed, min and max emit nothing on an empty stream
     (RxLua emits nil); the observer only gets onCompleted.
 (e) Observable.fromTable(t [, iterator [, keys]]): without an iterator,
     the sequence t[1..#t] comes first, in order, then the other keys in
     pairs order (RxLua uses plain pairs, whose order is unspecified).
     Keys are emitted as a second value when `keys` is true, or when the
     iterator given is `pairs` and `keys` is not false.
 (f) subscribe always returns a Subscription. Subscribing to a Subject
     that has already completed or failed delivers that end at once.
 (g) Subject.fromFileByLine(filename), used by the seed's scripts, is the
     cold Observable.fromFileByLine: each subscription reads the file.

Operators emit multiple values the RxLua way (fromTable with keys emits
value, key; buffer(n) emits n values as n arguments; zip one value per
source). Host extensions (zmq-rx, sgx-rx) add methods to Rx.Observable;
Subject instances see them through inheritance. Observable:_map,
Observable:_filter and Observable:_reduce take an extra operator name
that the hook receives, for such extensions (mapSGX, ...).
--]==]

local pcall, type, select, setmetatable, getmetatable, tostring, error =
      pcall, type, select, setmetatable, getmetatable, tostring, error
local pairs, next = pairs, next
local unpack, pack = table.unpack, table.pack
local mathtype = math.type

local util = {}
local Observer = {}
local Observable = {}
local Subject = {}
local Subscription = {}

---------------------------------------------------------------------------
-- util
---------------------------------------------------------------------------

--- The hook for errors raised by user callbacks in operators, see (b).
util.onUserError = nil

function util.noop() end
function util.identity(...) return ... end
function util.constant(...)
  local n, values = select('#', ...), { ... }
  return function() return unpack(values, 1, n) end
end
function util.eq(a, b) return a == b end
function util.isCallable(f)
  if type(f) == 'function' then return true end
  local mt = getmetatable(f)
  return type(mt) == 'table' and type(mt.__call) == 'function'
end
util.pack = pack
util.unpack = unpack

--- True when object's class is class or inherits from it (metatable chain).
function util.isa(object, class)
  if type(object) ~= 'table' then return false end
  local mt = getmetatable(object)
  while type(mt) == 'table' do
    if mt == class then return true end
    local parent = getmetatable(mt)
    mt = parent and rawget(parent, '__index')
  end
  return false
end

--- RxLua's helper: runs fn(...) protected, sends an error to observer:onError.
-- Returns pcall's results.
function util.tryWithObserver(observer, fn, ...)
  local ok, result = pcall(fn, ...)
  if not ok then observer:onError(result) end
  return ok, result
end

local function deepCopy(value, seen)
  if type(value) ~= 'table' then return value end
  if seen[value] then return seen[value] end
  local copy = {}
  seen[value] = copy
  for k, v in next, value do
    copy[deepCopy(k, seen)] = deepCopy(v, seen)
  end
  return setmetatable(copy, getmetatable(value))
end

--- A deep copy of value: tables are copied recursively (keys too, cycles
-- and shared subtables preserved); metatables are shared, not copied.
function util.deepCopy(value)
  if type(value) ~= 'table' then return value end
  return deepCopy(value, {})
end

---------------------------------------------------------------------------
-- Subscription
---------------------------------------------------------------------------

Subscription.__index = Subscription
Subscription.__tostring = function() return 'Subscription' end

--- A Subscription whose unsubscribe runs action(subscription) once.
function Subscription.create(action)
  return setmetatable({ action = action or util.noop, unsubscribed = false },
                      Subscription)
end

function Subscription:unsubscribe()
  if self.unsubscribed then return end
  self.unsubscribed = true
  self.action(self)
end

---------------------------------------------------------------------------
-- Observer
---------------------------------------------------------------------------

Observer.__index = Observer
Observer.__tostring = function() return 'Observer' end

local function raise(err) error(err, 0) end

--- An Observer calling onNext(...), onError(err), onCompleted(). Missing
-- callbacks do nothing, except onError which raises the error.
-- After onError or onCompleted the observer is `stopped` and ignores
-- everything.
function Observer.create(onNext, onError, onCompleted)
  return setmetatable({
    _onNext = onNext or util.noop,
    _onError = onError or raise,
    _onCompleted = onCompleted or util.noop,
    stopped = false,
  }, Observer)
end

function Observer:onNext(...)
  if self.stopped then return end
  return self._onNext(...)
end

function Observer:onError(err)
  if self.stopped then return end
  self.stopped = true
  return self._onError(err)
end

function Observer:onCompleted()
  if self.stopped then return end
  self.stopped = true
  return self._onCompleted()
end

-- subscribe(onNext, onError, onCompleted) or subscribe(observer): the
-- Observer to use. Our Observers (anything with an _onNext function) are
-- used as they are; other tables with onNext/onError/onCompleted methods
-- (a Subject, a user object) are wrapped.
local function toObserver(onNext, onError, onCompleted)
  if type(onNext) == 'table'
     and (type(onNext._onNext) == 'function' or type(onNext.onNext) == 'function') then
    local target = onNext
    if type(target._onNext) == 'function' then return target end
    return Observer.create(
      function(...) return target:onNext(...) end,
      function(err)
        if target.onError then return target:onError(err) end
        return raise(err)
      end,
      function() if target.onCompleted then return target:onCompleted() end end)
  end
  return Observer.create(onNext, onError, onCompleted)
end

-- An error from a user callback in operator `name`: ask the hook, then
-- either skip the event (return) or stop and send the error downstream.
local function fail(up, down, err, name)
  local hook = util.onUserError
  if hook ~= nil and hook(err, name) == true then return end
  up.stopped = true
  return down:onError(err)
end

---------------------------------------------------------------------------
-- Observable
---------------------------------------------------------------------------

Observable.__index = Observable
Observable.__tostring = function() return 'Observable' end
Observable.stateful = false

--- An Observable whose subscription runs subscribe(observer). The function
-- may return a Subscription, a cleanup function, or nothing.
function Observable.create(subscribe)
  local self = setmetatable({ _subscribe = subscribe, stateful = false }, Observable)
  self.root = self
  return self
end

local function isObservable(x)
  return type(x) == 'table' and type(x.subscribe) == 'function'
end

-- A new Observable derived from source: keeps the chain's root, and is
-- stateful when the operator is or anything upstream is.
local function derive(source, stateful, subscribe)
  return setmetatable({
    _subscribe = subscribe,
    stateful = stateful or source.stateful == true,
    root = source.root or source,
  }, Observable)
end

--- Subscribes onNext, onError, onCompleted (or an observer table).
-- Returns a Subscription; unsubscribing stops the events to this
-- subscriber at once and asks the source to stop producing.
function Observable:subscribe(onNext, onError, onCompleted)
  local observer = toObserver(onNext, onError, onCompleted)
  local inner = self._subscribe(observer)
  return Subscription.create(function()
    observer.stopped = true
    if type(inner) == 'table' and inner.unsubscribe then
      inner:unsubscribe()
    elseif type(inner) == 'function' then
      inner()
    end
  end)
end

-- Subscribes a fresh internal observer `up` to source and returns it with
-- the subscription. The caller sets up._onNext etc. before events flow,
-- so connect takes the three functions.
local function connect(source, up, onNext, onError, onCompleted)
  up._onNext, up._onError, up._onCompleted = onNext, onError, onCompleted
  return source:subscribe(up)
end

local function newObserver()
  return setmetatable({ stopped = false }, Observer)
end

-- onError/onCompleted forwarders, shared by most operators.
local function forwardError(down) return function(e) return down:onError(e) end end
local function forwardCompleted(down) return function() return down:onCompleted() end end

------------------------------- constructors -------------------------------

--- Emits each argument (nil included), then completes.
function Observable.of(...)
  local n, values = select('#', ...), { ... }
  return Observable.create(function(observer)
    local onNext = observer._onNext
    for i = 1, n do
      if observer.stopped then return end
      onNext(values[i])
    end
    return observer:onCompleted()
  end)
end
Observable.fromValue = Observable.of

--- Emits initial, initial+step, ... up to limit, like a numeric for.
-- fromRange(n) is fromRange(1, n).
function Observable.fromRange(initial, limit, step)
  if limit == nil and step == nil then initial, limit = 1, initial end
  step = step or 1
  return Observable.create(function(observer)
    local onNext = observer._onNext
    for i = initial, limit, step do
      if observer.stopped then return end
      onNext(i)
    end
    return observer:onCompleted()
  end)
end

--- Emits the values of t, see (e) at the top for the order and the keys.
function Observable.fromTable(t, iterator, keys)
  if keys == nil then keys = (iterator == pairs) end
  return Observable.create(function(observer)
    local onNext = observer._onNext
    if iterator == nil then
      local n = #t
      for i = 1, n do
        if observer.stopped then return end
        if keys then onNext(t[i], i) else onNext(t[i]) end
      end
      for k, v in pairs(t) do
        if observer.stopped then return end
        if not (mathtype(k) == 'integer' and k >= 1 and k <= n) then
          if keys then onNext(v, k) else onNext(v) end
        end
      end
    else
      for k, v in iterator(t) do
        if observer.stopped then return end
        if keys then onNext(v, k) else onNext(v) end
      end
    end
    return observer:onCompleted()
  end)
end

--- Emits the lines of a file (without their newline), read when
-- subscribed, then completes. A file that cannot be opened or read gives
-- onError with a message naming the file.
function Observable.fromFileByLine(filename)
  return Observable.create(function(observer)
    local io = io
    if type(io) ~= 'table' or type(io.open) ~= 'function' then
      return observer:onError('fromFileByLine: ' .. tostring(filename) ..
                              ': no file access (io library missing)')
    end
    local file, err = io.open(filename, 'r')
    if not file then
      return observer:onError('fromFileByLine: cannot open ' .. tostring(filename) ..
                              ': ' .. tostring(err))
    end
    local onNext = observer._onNext
    local failure
    do
      local f <close> = file
      while not observer.stopped do
        local line, rerr = f:read('l')
        if line == nil then failure = rerr; break end
        onNext(line)
      end
    end
    if observer.stopped then return end
    if failure then
      return observer:onError('fromFileByLine: cannot read ' .. tostring(filename) ..
                              ': ' .. tostring(failure))
    end
    return observer:onCompleted()
  end)
end

--- Completes at once.
function Observable.empty()
  return Observable.create(function(observer) return observer:onCompleted() end)
end

--- Never emits, never ends.
function Observable.never()
  return Observable.create(function() end)
end

--- Fails at once with message.
function Observable.throw(message)
  return Observable.create(function(observer) return observer:onError(message) end)
end

-------------------------------- operators ---------------------------------

--- map with the operator name given to the error hook (for extensions).
function Observable:_map(callback, name)
  callback = callback or util.identity
  name = name or 'map'
  local source = self
  return derive(self, false, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local function emit(ok, ...)
      if ok then return dnext(...) end
      return fail(up, down, (...), name)
    end
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      return emit(pcall(callback, ...))
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits callback(...) for each event (all its return values).
function Observable:map(callback) return self:_map(callback, 'map') end

--- filter with the operator name given to the error hook (for extensions).
function Observable:_filter(predicate, name)
  predicate = predicate or util.identity
  name = name or 'filter'
  local source = self
  return derive(self, false, function(down)
    local up = newObserver()
    local dnext = down._onNext
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      local ok, keep = pcall(predicate, ...)
      if ok then
        if keep then return dnext(...) end
        return
      end
      return fail(up, down, keep, name)
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits the events for which predicate(...) is true.
function Observable:filter(predicate) return self:_filter(predicate, 'filter') end

--- Emits the events for which predicate(...) is false.
function Observable:reject(predicate)
  predicate = predicate or util.identity
  return self:_filter(function(...) return not predicate(...) end, 'reject')
end

--- Drops false and nil events.
function Observable:compact() return self:_filter(util.identity, 'compact') end

-- The accumulator of reduce/scan: a deep copy of a table seed, see (a).
local function startValue(seed)
  if type(seed) == 'table' then return deepCopy(seed, {}) end
  return seed
end

--- reduce with the operator name given to the error hook (for extensions).
function Observable:_reduce(accumulator, seed, name)
  name = name or 'reduce'
  local source = self
  local seeded = seed ~= nil
  return derive(self, true, function(down)
    local up = newObserver()
    local result = startValue(seed)
    local has = seeded
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      if not has then
        result, has = (...), true
        return
      end
      local ok, value = pcall(accumulator, result, ...)
      if ok then
        result = value
        return
      end
      return fail(up, down, value, name)
    end, forwardError(down), function()
      if has then down:onNext(result) end
      return down:onCompleted()
    end)
  end)
end

--- Emits, at completion, accumulator(...accumulator(seed, e1)..., en).
-- Without a seed the first event is the start value; see (a) and (d).
function Observable:reduce(accumulator, seed)
  return self:_reduce(accumulator, seed, 'reduce')
end

--- Like reduce, but emits the accumulator after each event. Without a seed
-- the first event only starts the accumulator (as in RxLua).
function Observable:scan(accumulator, seed)
  local source = self
  local seeded = seed ~= nil
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local result = startValue(seed)
    local has = seeded
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      if not has then
        result, has = (...), true
        return
      end
      local ok, value = pcall(accumulator, result, ...)
      if ok then
        result = value
        return dnext(value)
      end
      return fail(up, down, value, 'scan')
    end, forwardError(down), forwardCompleted(down))
  end)
end

local function add(a, b) return a + b end
local function smaller(a, b) if b < a then return b end return a end
local function larger(a, b) if b > a then return b end return a end

--- Emits the sum of the events (0 for an empty stream).
function Observable:sum() return self:_reduce(add, 0, 'sum') end
--- Emits the smallest event (nothing for an empty stream).
function Observable:min() return self:_reduce(smaller, nil, 'min') end
--- Emits the largest event (nothing for an empty stream).
function Observable:max() return self:_reduce(larger, nil, 'max') end

--- Emits the mean of the events (nothing for an empty stream).
function Observable:average()
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local total, n = 0, 0
    return connect(source, up, function(value)
      if down.stopped then up.stopped = true; return end
      local ok, s = pcall(add, total, value)
      if ok then
        total, n = s, n + 1
        return
      end
      return fail(up, down, s, 'average')
    end, forwardError(down), function()
      if n > 0 then down:onNext(total / n) end
      return down:onCompleted()
    end)
  end)
end

--- Emits the number of events (for which predicate(...) is true, if given).
function Observable:count(predicate)
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local n = 0
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      if predicate == nil then n = n + 1; return end
      local ok, yes = pcall(predicate, ...)
      if ok then
        if yes then n = n + 1 end
        return
      end
      return fail(up, down, yes, 'count')
    end, forwardError(down), function()
      down:onNext(n)
      return down:onCompleted()
    end)
  end)
end

local NIL = {}   -- the key distinct uses for nil

--- Emits each event whose (first) value was not seen before.
function Observable:distinct()
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local seen = {}
    return connect(source, up, function(value, ...)
      if down.stopped then up.stopped = true; return end
      local key = value
      if key == nil then key = NIL elseif key ~= key then return dnext(value, ...) end
      if seen[key] then return end
      seen[key] = true
      return dnext(value, ...)
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits an event when its (first) value differs from the previous one's,
-- by == or by comparator(a, b) returning true for equal values.
function Observable:distinctUntilChanged(comparator)
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local first, last = true, nil
    return connect(source, up, function(value, ...)
      if down.stopped then up.stopped = true; return end
      if first then
        first, last = false, value
        return dnext(value, ...)
      end
      local same
      if comparator == nil then
        same = (value == last)
      else
        local ok
        ok, same = pcall(comparator, value, last)
        if not ok then return fail(up, down, same, 'distinctUntilChanged') end
      end
      if same then return end
      last = value
      return dnext(value, ...)
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits the first n events (default 1), then completes and stops the source.
function Observable:take(n)
  n = n or 1
  local source = self
  return derive(self, true, function(down)
    if n <= 0 then return down:onCompleted() end
    local up = newObserver()
    local dnext = down._onNext
    local i = 0
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      i = i + 1
      if i < n then return dnext(...) end
      up.stopped = true
      dnext(...)
      return down:onCompleted()
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits the first event, then completes.
function Observable:first() return self:take(1) end

--- Emits the last event at completion (nothing for an empty stream).
function Observable:last()
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local has, value, rest = false, nil, nil
    return connect(source, up, function(v, w, ...)
      if down.stopped then up.stopped = true; return end
      has, value = true, v
      -- (a single value: no table; a nil second and third value count as none)
      if w == nil and (...) == nil then rest = nil else rest = pack(w, ...) end
    end, forwardError(down), function()
      if has then
        if rest then down:onNext(value, unpack(rest, 1, rest.n))
        else down:onNext(value) end
      end
      return down:onCompleted()
    end)
  end)
end

--- Skips the first n events (default 1).
function Observable:skip(n)
  n = n or 1
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local i = 0
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      if i < n then i = i + 1; return end
      return dnext(...)
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Emits events while predicate(...) is true, then completes.
function Observable:takeWhile(predicate)
  predicate = predicate or util.identity
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      local ok, yes = pcall(predicate, ...)
      if not ok then return fail(up, down, yes, 'takeWhile') end
      if yes then return dnext(...) end
      up.stopped = true
      return down:onCompleted()
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Skips events while predicate(...) is true, then emits everything.
function Observable:skipWhile(predicate)
  predicate = predicate or util.identity
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local skipping = true
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      if skipping then
        local ok, yes = pcall(predicate, ...)
        if not ok then return fail(up, down, yes, 'skipWhile') end
        if yes then return end
        skipping = false
      end
      return dnext(...)
    end, forwardError(down), forwardCompleted(down))
  end)
end

--- Groups the values into runs of size and emits each run as that many
-- arguments (as RxLua does); the last, shorter run at completion or error.
function Observable:buffer(size)
  if type(size) ~= 'number' or size < 1 then
    error('buffer: size must be a number >= 1', 2)
  end
  local source = self
  return derive(self, true, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local buf, n = {}, 0
    local function flush()
      if n == 0 then return end
      local k = n
      n = 0
      return dnext(unpack(buf, 1, k))
    end
    local function put(v)
      n = n + 1
      buf[n] = v
      if n >= size then return flush() end
    end
    return connect(source, up, function(v, w, ...)
      if down.stopped then up.stopped = true; return end
      -- (a single value: no select; a nil second and third value count as none)
      if w == nil and (...) == nil then return put(v) end
      put(v)
      put(w)
      for i = 1, select('#', ...) do put((select(i, ...))) end
    end, function(e)
      if not down.stopped then flush() end
      return down:onError(e)
    end, function()
      if not down.stopped then flush() end
      return down:onCompleted()
    end)
  end)
end

--- Runs onNext(...), onError(err), onCompleted() as the events pass.
-- An error in onNext is a user error ('tap'); one in onError/onCompleted
-- is sent to onError.
function Observable:tap(onNext, onError, onCompleted)
  onNext = onNext or util.noop
  local source = self
  return derive(self, false, function(down)
    local up = newObserver()
    local dnext = down._onNext
    return connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      local ok, err = pcall(onNext, ...)
      if ok then return dnext(...) end
      return fail(up, down, err, 'tap')
    end, function(e)
      if onError then
        local ok, err = pcall(onError, e)
        if not ok then return down:onError(err) end
      end
      return down:onError(e)
    end, function()
      if onCompleted then
        local ok, err = pcall(onCompleted)
        if not ok then return down:onError(err) end
      end
      return down:onCompleted()
    end)
  end)
end

--- Emits value[key] (value[k1][k2]... with several keys) for each event.
function Observable:pluck(key, ...)
  if key == nil then return self end
  local plucked = self:_map(function(value) return value[key] end, 'pluck')
  if select('#', ...) > 0 then return plucked:pluck(...) end
  return plucked
end

--- Subscribes to each Observable the source emits and emits their events;
-- completes when the source and all of them have completed.
function Observable:flatten()
  return self:flatMap(util.identity)
end

--- Emits the events of the Observables callback(...) returns, merged.
function Observable:flatMap(callback)
  callback = callback or util.identity
  local source = self
  return derive(self, false, function(down)
    local up = newObserver()
    local dnext = down._onNext
    local remaining = 1
    local subscriptions = {}
    local function innerError(e)
      up.stopped = true
      return down:onError(e)
    end
    local function completed()
      remaining = remaining - 1
      if remaining == 0 then return down:onCompleted() end
    end
    local outer = connect(source, up, function(...)
      if down.stopped then up.stopped = true; return end
      local ok, inner = pcall(callback, ...)
      if not ok then return fail(up, down, inner, 'flatMap') end
      if not isObservable(inner) then
        return fail(up, down, 'flatMap: callback returned ' .. type(inner) ..
                    ', not an Observable', 'flatMap')
      end
      remaining = remaining + 1
      local observer = newObserver()
      local done = false
      connect(inner, observer, function(...)
        if down.stopped then observer.stopped = true; return end
        return dnext(...)
      end, innerError, function()
        done = true
        subscriptions[observer] = nil
        return completed()
      end)
      -- (synchronous inners are done by now: keep only the live ones)
      if not done then subscriptions[observer] = true end
    end, innerError, completed)
    return Subscription.create(function()
      for observer in pairs(subscriptions) do observer.stopped = true end
      outer:unsubscribe()
    end)
  end)
end

-- The observables of a merge/concat/zip: self and the arguments.
local function sourcesOf(first, ...)
  local list = { first, ... }
  local stateful = false
  for i = 1, #list do
    if not isObservable(list[i]) then
      error('expected Observables, argument ' .. i .. ' is a ' .. type(list[i]), 3)
    end
    if list[i].stateful then stateful = true end
  end
  return list, stateful
end

--- Emits the events of self and of every argument as they come; completes
-- when all have completed.
function Observable:merge(...)
  local sources, stateful = sourcesOf(self, ...)
  return derive(self, stateful, function(down)
    local dnext = down._onNext
    local remaining = #sources
    local subs, ups = {}, {}
    local function onError(e)
      for i = 1, #ups do ups[i].stopped = true end
      return down:onError(e)
    end
    local function onCompleted()
      remaining = remaining - 1
      if remaining == 0 then return down:onCompleted() end
    end
    for i = 1, #sources do
      local up = newObserver()
      ups[i] = up
      subs[i] = connect(sources[i], up, function(...)
        if down.stopped then up.stopped = true; return end
        return dnext(...)
      end, onError, onCompleted)
    end
    return Subscription.create(function()
      for i = 1, #subs do subs[i]:unsubscribe() end
    end)
  end)
end

--- Emits the events of self, then of each argument in turn.
function Observable:concat(...)
  local sources, stateful = sourcesOf(self, ...)
  return derive(self, stateful, function(down)
    local dnext = down._onNext
    local current
    local function start(i)
      if i > #sources then return down:onCompleted() end
      local up = newObserver()
      current = up
      return connect(sources[i], up, function(...)
        if down.stopped then up.stopped = true; return end
        return dnext(...)
      end, forwardError(down), function() return start(i + 1) end)
    end
    start(1)
    return Subscription.create(function() if current then current.stopped = true end end)
  end)
end

--- Rx.Observable.zip(a, b, ...) or a:zip(b, ...): emits the i-th values of
-- all sources together (the first value of each event); completes when a
-- source has completed and has no value left waiting.
function Observable.zip(...)
  local sources = sourcesOf(...)
  return derive(sources[1], true, function(down)
    local k = #sources
    local queues, heads, tails, ended = {}, {}, {}, {}
    local ups = {}
    local function finish()
      for i = 1, k do ups[i].stopped = true end
      return down:onCompleted()
    end
    for i = 1, k do queues[i], heads[i], tails[i] = {}, 1, 0 end
    local subs = {}
    for i = 1, k do
      local up = newObserver()
      ups[i] = up
      subs[i] = connect(sources[i], up, function(value)
        if down.stopped then up.stopped = true; return end
        tails[i] = tails[i] + 1
        queues[i][tails[i]] = value
        for j = 1, k do
          if heads[j] > tails[j] then return end
        end
        local row = {}
        for j = 1, k do
          local q, h = queues[j], heads[j]
          row[j] = q[h]
          q[h] = nil
          heads[j] = h + 1
        end
        down:onNext(unpack(row, 1, k))
        for j = 1, k do
          if ended[j] and heads[j] > tails[j] then return finish() end
        end
      end, function(e)
        for j = 1, k do ups[j].stopped = true end
        return down:onError(e)
      end, function()
        ended[i] = true
        if heads[i] > tails[i] then return finish() end
      end)
    end
    return Subscription.create(function()
      for i = 1, #subs do subs[i]:unsubscribe() end
    end)
  end)
end

--- Subscribes and prints every notification, prefixed with name.
function Observable:dump(name, formatter)
  name = name and (name .. ' ') or ''
  formatter = formatter or tostring
  return self:subscribe(
    function(...) print(name .. 'onNext: ' .. formatter(...)) end,
    function(e) print(name .. 'onError: ' .. tostring(e)) end,
    function() print(name .. 'onCompleted') end)
end

---------------------------------------------------------------------------
-- Subject: an Observable and an Observer at once; what it is told it
-- passes to every current subscriber.
---------------------------------------------------------------------------

Subject.__index = Subject
Subject.__tostring = function() return 'Subject' end
setmetatable(Subject, { __index = Observable })

function Subject.create()
  local self = setmetatable({ observers = {}, stopped = false, stateful = false }, Subject)
  self.root = self
  return self
end

local function without(list, item)
  local copy = {}
  for i = 1, #list do
    if list[i] ~= item then copy[#copy + 1] = list[i] end
  end
  return copy
end

--- Adds a subscriber; returns a Subscription that removes it. A Subject
-- that has ended passes that end to a new subscriber at once, see (f).
function Subject:subscribe(onNext, onError, onCompleted)
  local observer = toObserver(onNext, onError, onCompleted)
  if self.stopped then
    if self.failure ~= nil then observer:onError(self.failure) else observer:onCompleted() end
    return Subscription.create()
  end
  -- copy-on-write: an onNext loop in progress keeps its own list
  local list = {}
  for i = 1, #self.observers do list[i] = self.observers[i] end
  list[#list + 1] = observer
  self.observers = list
  return Subscription.create(function()
    observer.stopped = true
    self.observers = without(self.observers, observer)
  end)
end

function Subject:onNext(...)
  if self.stopped then return end
  local list = self.observers
  if list[2] == nil then   -- one subscriber (the usual case) or none
    local observer = list[1]
    if observer == nil then return end
    if not observer.stopped then return observer._onNext(...) end
    self.observers = {}
    return
  end
  local pruned = false
  for i = 1, #list do
    local observer = list[i]
    if observer.stopped then pruned = true else observer._onNext(...) end
  end
  if pruned then
    local live = {}
    for _, observer in ipairs(self.observers) do
      if not observer.stopped then live[#live + 1] = observer end
    end
    self.observers = live
  end
end

function Subject:onError(err)
  if self.stopped then return end
  self.stopped, self.failure = true, err
  local list = self.observers
  self.observers = {}
  for i = 1, #list do list[i]:onError(err) end
end

function Subject:onCompleted()
  if self.stopped then return end
  self.stopped = true
  local list = self.observers
  self.observers = {}
  for i = 1, #list do list[i]:onCompleted() end
end

Subject.__call = Subject.onNext

--- The seed's entry point: the lines of a file, read when subscribed
-- (the same cold Observable as Observable.fromFileByLine).
function Subject.fromFileByLine(filename)
  return Observable.fromFileByLine(filename)
end

return {
  Observable = Observable,
  Observer = Observer,
  Subject = Subject,
  Subscription = Subscription,
  util = util,
}
