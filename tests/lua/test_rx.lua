-- test_rx.lua - tests of lib/lua/rx.lua, the RxLua-compatible stream API.
-- Run from the repository root: lua5.4 tests/lua/test_rx.lua [name-pattern]
-- Prints one line per failure (expected vs actual) and a closing count;
-- exits non-zero when a test failed.

if not package.preload.rx and not package.searchpath('rx', package.path) then
  local here = (arg and arg[0] or ''):match('^(.*)[/\\][^/\\]*$') or '.'
  package.path = here .. '/../../lib/lua/?.lua;lib/lua/?.lua;' .. package.path
end

local Rx = require 'rx'
local Observable, Subject, Observer, Subscription, util =
  Rx.Observable, Rx.Subject, Rx.Observer, Rx.Subscription, Rx.util

local here = (arg and arg[0] or ''):match('^(.*)[/\\][^/\\]*$') or '.'
package.path = here .. '/?.lua;' .. package.path
local T = require 'harness'
local test, show, eq, is, ok, contains = T.test, T.show, T.eq, T.is, T.ok, T.contains

-- events (every event packed), the error, whether it completed.
local function collect(observable)
  local r = { values = {}, events = {}, completed = false, err = nil }
  r.subscription = observable:subscribe(
    function(...)
      r.values[#r.values + 1] = (...)
      r.events[#r.events + 1] = table.pack(...)
    end,
    function(e) r.err = e end,
    function() r.completed = true end)
  return r
end

local function values(observable) return collect(observable).values end

local function tmpfile(content)
  local name = os.tmpname()
  local f = assert(io.open(name, 'w'))
  f:write(content)
  f:close()
  return name
end

---------------------------------------------------------------------------
-- the seed's scripts
---------------------------------------------------------------------------

local people = {
  { name = 'ann', age = 34 }, { name = 'bob', age = 12 }, { name = 'cid', age = 19 },
  { name = 'dan', age = 18 }, { name = 'eve', age = 60 }, { name = 'fay', age = 7 },
}

test('listing 5.1: average age of adults', function()
  -- Listing 5.1 as intended (the printed listing indexes accumulator[count]
  -- with an undefined global and has no seed; see the next test).
  local printed, errors, completed = nil, {}, false
  Rx.Observable.fromTable(people)
    :map(function(person) return person.age end)
    :filter(function(age) return age > 18 end)
    :reduce(function(accumulator, age)
      accumulator.count = (accumulator.count or 0) + 1
      accumulator.sum = (accumulator.sum or 0) + age
      return accumulator
    end, {})
    :subscribe(function(datas) printed = datas.sum / datas.count end,
               function(err) errors[#errors + 1] = err end,
               function() completed = true end)
  eq(printed, (34 + 19 + 60) / 3, 'average age')
  eq(#errors, 0, 'errors')
  eq(completed, true, 'completed')
end)

test('listing 5.1 as printed: its bug reaches onError', function()
  local result, err, completed
  Rx.Observable.fromTable(people)
    :map(function(person) return person.age end)
    :filter(function(age) return age > 18 end)
    :reduce(function(accumulator, age)
      accumulator[count] = (accumulator.count or 0) + 1 -- luacheck: ignore (global count)
      accumulator[sum] = (accumulator.sum or 0) + age   -- luacheck: ignore
      return accumulator
    end)
    :subscribe(function(d) result = d end, function(e) err = e end, function() completed = true end)
  eq(result, nil, 'result')
  ok(err ~= nil, 'onError called')
  contains(err, 'index a number', 'error message')
  eq(completed, nil, 'completed')
end)

test('listing 8.2 shape: file by line, csv map, filter, reduce by carrier', function()
  local name = tmpfile(table.concat({
    'Year,Month,DayofMonth,DayOfWeek,DepTime,CRSDepTime,ArrTime,CRSArrTime,UniqueCarrier,FlightNum,TailNum,ActualElapsedTime,CRSElapsedTime,AirTime,ArrDelay',
    '2008,1,3,4,2003,1955,2211,2225,WN,335,N712SW,128,150,116,-14',
    '2008,1,3,4,754,735,1002,1000,WN,3231,N772SW,128,145,113,2',
    '2008,1,3,4,628,620,804,750,AA,448,N428WN,96,90,76,14',
    '2008,1,3,4,926,930,1054,1100,WN,1746,N612SW,88,90,78,NA',
    '2008,1,3,4,1829,1755,1959,1925,AA,3920,N464WN,90,90,77,34',
  }, '\n') .. '\n')
  local function parse(line)
    local a = {}
    for field in (line .. ','):gmatch('([^,]*),') do a[#a + 1] = field end
    return a
  end
  local results, done = {}, false
  Rx.Subject.fromFileByLine(name)
    :map(function(value)
      if not value then return {} end
      local array = parse(value)
      return { uniquecarrier = array[9], arrdelay = array[15] }
    end)
    :filter(function(event) return (tonumber(event.arrdelay) or 0) > 0 end)
    :reduce(function(accumulator, event)
      local carrier = accumulator[event.uniquecarrier] or {}
      accumulator[event.uniquecarrier] = { count = (carrier.count or 0) + 1,
                                           total = (carrier.total or 0) + event.arrdelay }
      return accumulator
    end, {})
    :subscribe(function(datas)
      for k, v in pairs(datas) do
        local carrier = results[k] or {}
        results[k] = { count = (carrier.count or 0) + v.count, total = (carrier.total or 0) + v.total }
      end
    end, function(e) error(e) end, function() done = true end)
  os.remove(name)
  eq(results, { WN = { count = 1, total = 2 }, AA = { count = 2, total = 48 } }, 'results')
  eq(done, true, 'completed')
end)

---------------------------------------------------------------------------
-- constructors
---------------------------------------------------------------------------

test('Observable.create: observer, returned subscription and cleanup', function()
  local cleaned = 0
  local o = Observable.create(function(observer)
    observer:onNext(1)
    observer:onNext(2)
    observer:onCompleted()
    observer:onNext(3) -- ignored after completion
    return function() cleaned = cleaned + 1 end
  end)
  local r = collect(o)
  eq(r.values, { 1, 2 }, 'values')
  eq(r.completed, true, 'completed')
  ok(getmetatable(r.subscription) == Subscription, 'a Subscription')
  r.subscription:unsubscribe()
  r.subscription:unsubscribe()
  eq(cleaned, 1, 'cleanup runs once')
  local inner = Subscription.create(function() cleaned = cleaned + 10 end)
  Observable.create(function() return inner end):subscribe():unsubscribe()
  eq(cleaned, 11, 'returned subscription unsubscribed')
end)

test('Observable.of and fromValue', function()
  local r = collect(Observable.of(1, nil, 'x'))
  eq(#r.events, 3, 'three events, nil included')
  eq({ r.events[1][1], r.events[2][1], r.events[3][1] }, { 1, nil, 'x' }, 'values')
  eq(r.completed, true, 'completed')
  eq(values(Observable.fromValue(7)), { 7 }, 'fromValue')
  eq(collect(Observable.of()).completed, true, 'of() completes')
end)

test('Observable.fromTable: array order, dictionaries, ipairs, pairs with keys', function()
  eq(values(Observable.fromTable({ 10, 20, 30 })), { 10, 20, 30 }, 'default on an array')
  local mixed = values(Observable.fromTable({ 1, 2, x = 3 }))
  eq({ mixed[1], mixed[2], mixed[3] }, { 1, 2, 3 }, 'array part first, then other keys')
  local dict = values(Observable.fromTable({ a = 1, b = 2 }))
  table.sort(dict)
  eq(dict, { 1, 2 }, 'dictionary values')
  eq(values(Observable.fromTable({ 1, 2, x = 3 }, ipairs)), { 1, 2 }, 'ipairs')
  local r = collect(Observable.fromTable({ a = 1, b = 2 }, pairs))
  local got = {}
  for _, e in ipairs(r.events) do got[e[2]] = e[1] end
  eq(got, { a = 1, b = 2 }, 'pairs emits value, key')
  local k = collect(Observable.fromTable({ 'p', 'q' }, ipairs, true))
  eq({ k.events[2][1], k.events[2][2] }, { 'q', 2 }, 'keys = true')
  local nokeys = collect(Observable.fromTable({ a = 1 }, pairs, false))
  eq(nokeys.events[1].n, 1, 'pairs with keys = false: value only')
  eq(collect(Observable.fromTable({})).completed, true, 'empty table completes')
end)

test('Observable.fromRange', function()
  eq(values(Observable.fromRange(3)), { 1, 2, 3 }, 'fromRange(3)')
  eq(values(Observable.fromRange(2, 10, 3)), { 2, 5, 8 }, 'step')
  eq(values(Observable.fromRange(5, 1, -2)), { 5, 3, 1 }, 'negative step')
  eq(values(Observable.fromRange(4, 6)), { 4, 5, 6 }, 'two arguments')
  local r = collect(Observable.fromRange(3, 1))
  eq(#r.values, 0, 'empty range')
  eq(r.completed, true, 'empty range completes')
end)

test('Observable.empty, never, throw', function()
  local e = collect(Observable.empty())
  eq(#e.values, 0, 'empty: values')
  eq(e.completed, true, 'empty completes')
  local n = collect(Observable.never())
  eq({ #n.values, n.completed, n.err }, { 0, false, nil }, 'never')
  local t = collect(Observable.throw('boom'))
  eq({ #t.values, t.completed, t.err }, { 0, false, 'boom' }, 'throw')
end)

test('fromFileByLine: lines of a temp file, Subject and Observable versions', function()
  local name = tmpfile('alpha\nbeta\n\ngamma')
  local r = collect(Observable.fromFileByLine(name))
  eq(r.values, { 'alpha', 'beta', '', 'gamma' }, 'lines')
  eq(r.completed, true, 'completed')
  local s = collect(Subject.fromFileByLine(name):map(function(l) return #l end))
  eq(s.values, { 5, 4, 0, 5 }, 'Subject.fromFileByLine:map')
  -- read when subscribed, again on each subscription
  local o = Subject.fromFileByLine(name)
  eq(#values(o), 4, 'first subscription')
  eq(#values(o), 4, 'second subscription')
  eq(values(Observable.fromFileByLine(name):take(2)), { 'alpha', 'beta' }, 'take stops reading')
  os.remove(name)
end)

test('fromFileByLine: a missing file gives onError naming the file', function()
  local missing = os.tmpname()
  os.remove(missing)
  local r = collect(Observable.fromFileByLine(missing))
  eq({ #r.values, r.completed }, { 0, false }, 'no values, no completion')
  contains(r.err, missing, 'error names the file')
  local s = collect(Subject.fromFileByLine(missing))
  contains(s.err, missing, 'Subject version')
  local raised, msg = pcall(function() Subject.fromFileByLine(missing):subscribe(function() end) end)
  eq(raised, false, 'raised without onError')
  contains(msg, missing, 'raised message')
end)

test('Subject: onNext/onError/onCompleted to every subscriber', function()
  local s = Subject.create()
  local a, b = collect(s), collect(s:map(function(x) return x * 10 end))
  s:onNext(1)
  s(2) -- __call is onNext
  s:onCompleted()
  s:onNext(3)
  eq(a.values, { 1, 2 }, 'first subscriber')
  eq(b.values, { 10, 20 }, 'second subscriber through map')
  eq({ a.completed, b.completed }, { true, true }, 'completed')
  local late = collect(s)
  eq(late.completed, true, 'late subscriber gets the completion')
  local f = Subject.create()
  local c = collect(f)
  f:onError('bad')
  eq(c.err, 'bad', 'onError')
  eq(collect(f).err, 'bad', 'late subscriber gets the error')
end)

test('Subject as an observer, Observer.create, Subscription', function()
  local s = Subject.create()
  local r = collect(s)
  Observable.fromRange(3):subscribe(s)
  eq(r.values, { 1, 2, 3 }, 'values through the subject')
  eq(r.completed, true, 'completion through the subject')
  local seen = {}
  local observer = Observer.create(function(v) seen[#seen + 1] = v end, nil,
                                   function() seen[#seen + 1] = 'done' end)
  Observable.of('a', 'b'):subscribe(observer)
  eq(seen, { 'a', 'b', 'done' }, 'Observer.create')
  local plain = { got = {} }
  function plain:onNext(v) self.got[#self.got + 1] = v end
  function plain:onCompleted() self.got[#self.got + 1] = 'end' end
  Observable.of(1, 2):subscribe(plain)
  eq(plain.got, { 1, 2, 'end' }, 'plain table observer')
  local raised = pcall(function() Observer.create():onError('x') end)
  eq(raised, false, 'default onError raises')
end)

---------------------------------------------------------------------------
-- operators
---------------------------------------------------------------------------

test('map: values and multiple return values', function()
  eq(values(Observable.fromRange(3):map(function(x) return x * x end)), { 1, 4, 9 }, 'squares')
  local r = collect(Observable.of(1):map(function(x) return x, 'two', 3 end))
  eq({ r.events[1].n, r.events[1][2], r.events[1][3] }, { 3, 'two', 3 }, 'all returns forwarded')
  eq(values(Observable.of(5):map()), { 5 }, 'identity by default')
  local kv = collect(Observable.fromTable({ a = 1 }, pairs):map(function(v, k) return k .. v end))
  eq(kv.values, { 'a1' }, 'map receives value, key')
end)

test('filter, reject, compact', function()
  local even = function(x) return x % 2 == 0 end
  eq(values(Observable.fromRange(6):filter(even)), { 2, 4, 6 }, 'filter')
  eq(values(Observable.fromRange(6):reject(even)), { 1, 3, 5 }, 'reject')
  local r = collect(Observable.of(1, false, nil, 0, '', 'x'):compact())
  eq(#r.events, 4, 'compact drops false and nil')
  eq({ r.values[1], r.values[2], r.values[3], r.values[4] }, { 1, 0, '', 'x' }, 'compact values')
end)

test('reduce: seed, no seed, empty stream', function()
  local add = function(a, b) return a + b end
  eq(values(Observable.fromRange(4):reduce(add, 100)), { 110 }, 'with seed')
  eq(values(Observable.fromRange(4):reduce(add)), { 10 }, 'without seed')
  local e = collect(Observable.empty():reduce(add))
  eq({ #e.events, e.completed }, { 0, true }, 'empty without seed: nothing')
  eq(values(Observable.empty():reduce(add, 0)), { 0 }, 'empty with seed: the seed')
  local multi = values(Observable.fromTable({ a = 1, b = 2 }, pairs)
    :reduce(function(acc, v, k) acc[k] = v; return acc end, {}))
  eq(multi[1], { a = 1, b = 2 }, 'accumulator receives every value')
end)

test('scan', function()
  local add = function(a, b) return a + b end
  eq(values(Observable.fromRange(4):scan(add, 0)), { 1, 3, 6, 10 }, 'with seed')
  eq(values(Observable.fromRange(4):scan(add)), { 3, 6, 10 }, 'without seed (RxLua)')
end)

test('flatMap and flatten', function()
  local r = collect(Observable.fromRange(3):flatMap(function(x)
    return Observable.fromRange(x)
  end))
  eq(r.values, { 1, 1, 2, 1, 2, 3 }, 'flatMap')
  eq(r.completed, true, 'completed')
  eq(values(Observable.of(Observable.of(1, 2), Observable.of(3)):flatten()), { 1, 2, 3 }, 'flatten')
  local bad = collect(Observable.of(1):flatMap(function() return 42 end))
  contains(bad.err, 'not an Observable', 'non-Observable result')
  -- with a live inner source, completion waits for it
  local inner = Subject.create()
  local live = collect(Observable.of(1):flatMap(function() return inner end))
  eq(live.completed, false, 'waits for the inner source')
  inner:onNext('late')
  inner:onCompleted()
  eq({ live.values[1], live.completed }, { 'late', true }, 'inner values, then completion')
end)

test('distinct and distinctUntilChanged', function()
  eq(values(Observable.of(1, 2, 1, 3, 2, 3, 4):distinct()), { 1, 2, 3, 4 }, 'distinct')
  local withNil = collect(Observable.of(nil, 1, nil):distinct())
  eq(#withNil.events, 2, 'distinct counts nil once')
  eq(values(Observable.of(1, 1, 2, 2, 1, 3, 3):distinctUntilChanged()), { 1, 2, 1, 3 },
     'distinctUntilChanged')
  local ci = function(a, b) return a:lower() == b:lower() end
  eq(values(Observable.of('a', 'A', 'b', 'B', 'a'):distinctUntilChanged(ci)), { 'a', 'b', 'a' },
     'with a comparator')
end)

test('take, first, skip', function()
  eq(values(Observable.fromRange(10):take(3)), { 1, 2, 3 }, 'take(3)')
  eq(values(Observable.fromRange(10):take()), { 1 }, 'take() is take(1)')
  local zero = collect(Observable.fromRange(10):take(0))
  eq({ #zero.values, zero.completed }, { 0, true }, 'take(0)')
  local short = collect(Observable.fromRange(2):take(5))
  eq({ short.values, short.completed }, { { 1, 2 }, true }, 'take more than there is')
  eq(values(Observable.fromRange(5, 9):first()), { 5 }, 'first')
  eq(values(Observable.fromRange(5):skip(3)), { 4, 5 }, 'skip(3)')
  eq(values(Observable.fromRange(3):skip()), { 2, 3 }, 'skip() is skip(1)')
end)

test('take stops an infinite synchronous source', function()
  local mapped = 0
  local r = collect(Observable.fromRange(1, math.huge)
    :map(function(x) mapped = mapped + 1; return x end)
    :filter(function() return true end)
    :take(3))
  eq(r.values, { 1, 2, 3 }, 'values')
  eq(r.completed, true, 'completed')
  ok(mapped <= 5, 'the producer stopped (map calls: ' .. mapped .. ')')
end)

test('takeWhile and skipWhile', function()
  local small = function(x) return x < 3 end
  local r = collect(Observable.fromRange(5):takeWhile(small))
  eq({ r.values, r.completed }, { { 1, 2 }, true }, 'takeWhile')
  eq(values(Observable.of(1, 2, 5, 1):skipWhile(small)), { 5, 1 }, 'skipWhile')
end)

test('buffer: runs of size as several values', function()
  local r = collect(Observable.fromRange(7):buffer(3))
  eq(#r.events, 3, 'three runs')
  eq({ r.events[1].n, r.events[1][1], r.events[1][3] }, { 3, 1, 3 }, 'first run')
  eq({ r.events[3].n, r.events[3][1] }, { 1, 7 }, 'last, shorter run at completion')
  eq(r.completed, true, 'completed')
  local pairsBuf = collect(Observable.fromTable({ 'a', 'b' }, ipairs, true):buffer(4))
  eq({ pairsBuf.events[1].n, pairsBuf.events[1][1], pairsBuf.events[1][2], pairsBuf.events[1][4] },
     { 4, 'a', 1, 2 }, 'each value of multi-value events is buffered')
  ok(not pcall(function() Observable.of(1):buffer(0) end), 'size 0 rejected')
end)

test('tap', function()
  local log = {}
  local r = collect(Observable.of(1, 2):tap(
    function(v) log[#log + 1] = 'next ' .. v end,
    function(e) log[#log + 1] = 'error ' .. e end,
    function() log[#log + 1] = 'done' end))
  eq(r.values, { 1, 2 }, 'values pass')
  eq(log, { 'next 1', 'next 2', 'done' }, 'side effects')
  local elog = {}
  collect(Observable.throw('bad'):tap(nil, function(e) elog[1] = e end))
  eq(elog, { 'bad' }, 'tap onError')
end)

test('count, sum, min, max, average', function()
  eq(values(Observable.fromRange(5):count()), { 5 }, 'count')
  eq(values(Observable.fromRange(5):count(function(x) return x > 3 end)), { 2 }, 'count(predicate)')
  eq(values(Observable.empty():count()), { 0 }, 'count of nothing')
  eq(values(Observable.fromRange(4):sum()), { 10 }, 'sum')
  eq(values(Observable.empty():sum()), { 0 }, 'sum of nothing')
  eq(values(Observable.of(3, 1, 4, 1, 5):min()), { 1 }, 'min')
  eq(values(Observable.of(3, 1, 4, 1, 5):max()), { 5 }, 'max')
  eq(values(Observable.of(1, 2, 3, 4):average()), { 2.5 }, 'average')
  local e = collect(Observable.empty():average())
  eq({ #e.events, e.completed }, { 0, true }, 'average of nothing')
  eq(#collect(Observable.empty():max()).events, 0, 'max of nothing')
end)

test('last', function()
  eq(values(Observable.fromRange(4):last()), { 4 }, 'last')
  local e = collect(Observable.empty():last())
  eq({ #e.events, e.completed }, { 0, true }, 'last of nothing')
  local kv = collect(Observable.fromTable({ 'a', 'b' }, ipairs, true):last())
  eq({ kv.events[1][1], kv.events[1][2] }, { 'b', 2 }, 'every value of the last event')
end)

test('concat and merge', function()
  eq(values(Observable.of(1, 2):concat(Observable.of(3), Observable.of(4, 5))), { 1, 2, 3, 4, 5 },
     'concat')
  local a, b = Subject.create(), Subject.create()
  local r = collect(a:merge(b))
  a:onNext('a1'); b:onNext('b1'); a:onNext('a2')
  a:onCompleted()
  eq(r.completed, false, 'merge waits for every source')
  b:onNext('b2'); b:onCompleted()
  eq({ r.values, r.completed }, { { 'a1', 'b1', 'a2', 'b2' }, true }, 'merge')
  local c1, c2 = Subject.create(), Subject.create()
  local cr = collect(c1:concat(c2))
  c2:onNext('too early'); c1:onNext(1); c1:onCompleted(); c2:onNext(2); c2:onCompleted()
  eq({ cr.values, cr.completed }, { { 1, 2 }, true }, 'concat of live sources')
end)

test('pluck and zip', function()
  local rows = { { a = { b = 1 } }, { a = { b = 2 } } }
  eq(values(Observable.fromTable(rows):pluck('a', 'b')), { 1, 2 }, 'nested pluck')
  eq(values(Observable.fromTable({ { x = 'p' } }):pluck('x')), { 'p' }, 'pluck')
  local z = collect(Observable.zip(Observable.of(1, 2, 3), Observable.of('a', 'b')))
  eq(#z.events, 2, 'zip stops with the shortest')
  eq({ z.events[2][1], z.events[2][2] }, { 2, 'b' }, 'zipped values')
  eq(z.completed, true, 'zip completes')
  local m = collect(Observable.of(1):zip(Observable.of(2)))
  eq({ m.events[1][1], m.events[1][2] }, { 1, 2 }, 'method form')
end)

---------------------------------------------------------------------------
-- errors and the error hook
---------------------------------------------------------------------------

test('an error in map reaches onError and stops the stream', function()
  local calls = 0
  local r = collect(Observable.fromRange(10):map(function(x)
    calls = calls + 1
    if x == 3 then error('bad record ' .. x) end
    return x
  end))
  eq(r.values, { 1, 2 }, 'values before the error')
  contains(r.err, 'bad record 3', 'error message')
  eq(r.completed, false, 'no completion after an error')
  eq(calls, 3, 'map not called again')
  local s = Subject.create()
  local sr = collect(s:map(function(x) return x.field end))
  s:onNext({ field = 1 }); s:onNext(5); s:onNext({ field = 2 })
  eq(sr.values, { 1 }, 'subject: nothing after the error')
  contains(sr.err, 'index a number', 'subject: error message')
end)

test('errors in filter, reduce, scan and other callbacks reach onError', function()
  local boom = function() error('boom') end
  for name, o in pairs({
    filter = Observable.of(1):filter(boom),
    reduce = Observable.of(1, 2):reduce(boom, 0),
    scan = Observable.of(1):scan(boom, 0),
    flatMap = Observable.of(1):flatMap(boom),
    takeWhile = Observable.of(1):takeWhile(boom),
    skipWhile = Observable.of(1):skipWhile(boom),
    tap = Observable.of(1):tap(boom),
    count = Observable.of(1):count(boom),
    distinctUntilChanged = Observable.of(1, 2):distinctUntilChanged(boom),
    sum = Observable.of(1, {}):sum(),
    pluck = Observable.of(1):pluck('x'),
  }) do
    local r = collect(o)
    ok(r.err ~= nil, name .. ': onError called')
    eq(r.completed, false, name .. ': not completed')
  end
end)

test('no onError: the error is raised to the caller', function()
  local raised, msg = pcall(function()
    Observable.fromRange(3):map(function(x) error('no handler ' .. x) end):subscribe(function() end)
  end)
  eq(raised, false, 'pcall result')
  contains(msg, 'no handler 1', 'message')
  local s = Subject.create()
  s:filter(function() error('in filter') end):subscribe(print)
  local r2, m2 = pcall(s.onNext, s, 1)
  eq(r2, false, 'raised from Subject:onNext')
  contains(m2, 'in filter', 'message')
end)

test('onUserError skip: map', function()
  local seen = {}
  util.onUserError = function(err, op) seen[#seen + 1] = op; return true end
  local r = collect(Observable.of(1, 'x', 3):map(function(v) return v * 2 end))
  eq(r.values, { 2, 6 }, 'bad record skipped, stream goes on')
  eq({ r.err, r.completed }, { nil, true }, 'no error, completed')
  eq(seen, { 'map' }, 'hook called with the operator name')
end)

test('onUserError skip: filter', function()
  local errs = {}
  util.onUserError = function(err, op) errs[#errs + 1] = op .. ': ' .. tostring(err); return true end
  local r = collect(Observable.of(5, 'x', 20, {}, 30):filter(function(v) return v > 10 end))
  eq(r.values, { 20, 30 }, 'values')
  eq(r.completed, true, 'completed')
  eq(#errs, 2, 'two errors counted')
  contains(errs[1], 'filter: ', 'operator name')
end)

test('onUserError skip: reduce keeps its accumulator', function()
  util.onUserError = function() return true end
  local r = collect(Observable.of(1, 2, 'x', 4):reduce(function(acc, v) return acc + v end, 0))
  eq(r.values, { 7 }, 'sum without the bad record')
  local t = collect(Observable.of(1, 'x', 2):reduce(function(acc, v)
    local n = v + 0 -- fails before touching the accumulator
    acc.sum = acc.sum + n
    acc.n = acc.n + 1
    return acc
  end, { sum = 0, n = 0 }))
  eq(t.values, { { sum = 3, n = 2 } }, 'table accumulator')
  local s = collect(Observable.of(1, 'x', 2):scan(function(a, v) return a + v end, 0))
  eq(s.values, { 1, 3 }, 'scan skips too')
end)

test('onUserError not true: the error goes to onError', function()
  local called = 0
  util.onUserError = function() called = called + 1; return false end
  local r = collect(Observable.of(1, 'x', 3):map(function(v) return v * 2 end))
  eq({ r.values, r.completed, called }, { { 2 }, false, 1 }, 'values, completed, hook calls')
  contains(r.err, 'attempt to mul', 'error message')
  util.onUserError = function() return 'yes' end
  ok(collect(Observable.of('x'):map(function(v) return v * 2 end)).err ~= nil,
     'only true skips')
end)

test('onUserError skip downstream of reduce: completion still arrives', function()
  util.onUserError = function() return true end
  local r = collect(Observable.of(1, 2):reduce(function(a, b) return a + b end, 0)
    :map(function() error('in the last stage') end))
  eq({ #r.events, r.err, r.completed }, { 0, nil, true }, 'no value, no error, completed')
end)

test("the subscriber's own errors are not caught: they reach the caller", function()
  local handled
  local raised, msg = pcall(function()
    Observable.of(1):map(function(x) return x end)
      :subscribe(function() error('subscriber bug') end, function(e) handled = e end)
  end)
  eq({ raised, handled }, { false, nil }, 'raised, not sent to onError')
  contains(msg, 'subscriber bug', 'message')
end)

test('onUserError: extension operators name themselves', function()
  local names = {}
  util.onUserError = function(_, op) names[#names + 1] = op; return true end
  local o = Observable.of(1)
  collect(o:_map(function() error('x') end, 'mapSGX'))
  collect(o:_filter(function() error('x') end, 'filterSGX'))
  collect(o:_reduce(function() error('x') end, 0, 'reduceSGX'))
  eq(names, { 'mapSGX', 'filterSGX', 'reduceSGX' }, 'names')
end)

---------------------------------------------------------------------------
-- extensions: seed copies, stateful, root
---------------------------------------------------------------------------

test('reduce and scan start each subscription from a copy of the seed', function()
  local seed = { total = 0, nested = { n = 0 } }
  local chain = Observable.fromRange(3):reduce(function(acc, v)
    acc.total = acc.total + v
    acc.nested.n = acc.nested.n + 1
    return acc
  end, seed)
  local first, second = values(chain)[1], values(chain)[1]
  eq(first, { total = 6, nested = { n = 3 } }, 'first subscription')
  eq(second, { total = 6, nested = { n = 3 } }, 'second subscription, same result')
  ok(first ~= second, 'distinct accumulators')
  eq(seed, { total = 0, nested = { n = 0 } }, 'seed untouched')
  local s = Observable.fromRange(2):scan(function(acc, v) acc[#acc + 1] = v; return acc end, {})
  eq(values(s)[2], { 1, 2 }, 'scan, first')
  eq(values(s)[2], { 1, 2 }, 'scan, second')
  local cyc = { }
  cyc.self = cyc
  local copy = util.deepCopy(cyc)
  ok(copy ~= cyc and copy.self == copy, 'deepCopy keeps cycles')
end)

test('stateful flag', function()
  local src = Observable.fromRange(3)
  eq(src.stateful, false, 'source')
  eq(src:map(print):filter(print):tap(print):pluck('x'):compact():flatMap(print).stateful, false,
     'stateless chain')
  local stateful = {
    'reduce', 'scan', 'distinct', 'distinctUntilChanged', 'buffer', 'count', 'sum', 'min', 'max',
    'average', 'take', 'skip', 'takeWhile', 'skipWhile', 'first', 'last',
  }
  for _, op in ipairs(stateful) do
    local o = (op == 'buffer') and src:buffer(2) or src[op](src, function(a) return a end)
    eq(o.stateful, true, op)
    eq(o:map(print).stateful, true, op .. ' then map')
  end
  eq(src:map(print):reduce(print, 0):filter(print).stateful, true, 'map:reduce:filter')
  eq(Subject.create().stateful, false, 'subject')
  eq(src:merge(src:sum()).stateful, true, 'merge with a stateful source')
  eq(src:concat(src).stateful, false, 'concat of stateless sources')
end)

test('root points to the start of the chain', function()
  local s = Subject.create()
  is(s.root, s, 'a subject is its own root')
  local chain = s:map(print):filter(print):reduce(print, {}):map(print)
  is(chain.root, s, 'derived chain')
  local src = Observable.fromTable({})
  is(src.root, src, 'source')
  is(src:take(2):skip(1).root, src, 'take:skip')
  is(src:flatMap(print):buffer(2):zip(s).root, src, 'flatMap:buffer:zip')
  is(src:merge(Observable.empty()).root, src, 'merge keeps the receiver root')
  local file = Subject.fromFileByLine('x')
  is(file:map(print):last().root, file, 'Subject.fromFileByLine chain')
end)

test('extension methods on Observable reach Subjects', function()
  Observable.doubled = function(self) return self:map(function(x) return 2 * x end) end
  local s = Subject.create()
  local r = collect(s:doubled())
  s:onNext(4)
  Observable.doubled = nil
  eq(r.values, { 8 }, 'values')
  ok(util.isa(s, Observable) and util.isa(s, Subject), 'isa')
end)

---------------------------------------------------------------------------
-- unsubscribe
---------------------------------------------------------------------------

test('unsubscribe stops emission from a subject', function()
  local s = Subject.create()
  local a = collect(s:map(function(x) return x + 1 end))
  local b = collect(s)
  s:onNext(1)
  a.subscription:unsubscribe()
  eq(#s.observers, 1, 'unsubscribed observer removed from the subject')
  s:onNext(2)
  s:onCompleted()
  eq({ a.values, a.completed }, { { 2 }, false }, 'unsubscribed: no more values, no completion')
  eq({ b.values, b.completed }, { { 1, 2 }, true }, 'other subscriber unaffected')
  eq(#s.observers, 0, 'observers released at completion')
end)

test('unsubscribe from inside onNext', function()
  local s = Subject.create()
  local got, sub = {}, nil
  sub = s:filter(function() return true end):subscribe(function(v)
    got[#got + 1] = v
    if v == 2 then sub:unsubscribe() end
  end)
  local other = collect(s)
  for i = 1, 4 do s:onNext(i) end
  eq(got, { 1, 2 }, 'stopped after unsubscribing')
  eq(other.values, { 1, 2, 3, 4 }, 'other subscriber gets everything')
end)

test('a producer sees a stopped observer', function()
  local produced = 0
  local o = Observable.create(function(observer)
    for i = 1, 100 do
      if observer.stopped then break end
      produced = produced + 1
      observer:onNext(i)
    end
    observer:onCompleted()
  end)
  eq(values(o:map(function(x) return x end):take(2)), { 1, 2 }, 'values')
  ok(produced <= 4, 'producer stopped early (produced ' .. produced .. ')')
end)

---------------------------------------------------------------------------

T.run('rx', function() util.onUserError = nil end)
