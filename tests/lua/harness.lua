-- harness.lua - the runner and assertions of the Lua tests (tests/lua/test_*.lua).
--
--   local T = require 'harness'
--   T.test('name', function() T.eq(actual, expected, 'what') end)
--   T.run('suite')   -- runs the tests matching arg[1], prints a line per
--                    -- failure and "suite: N passed, N failed", exits 1 on a failure
--
-- Assertions raise with both values shown, at the caller's line.
local T = {}

local tests = {}
function T.test(name, fn) tests[#tests + 1] = { name = name, fn = fn } end

function T.show(v, depth)
  depth = depth or 0
  if type(v) == 'string' then return string.format('%q', v) end
  if type(v) ~= 'table' or depth > 3 then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == 'number' or type(a) == 'string') then return a < b end
    return type(a) < type(b)
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = (math.type(k) == 'integer' and '' or (tostring(k) .. '=')) .. T.show(v[k], depth + 1)
  end
  return '{' .. table.concat(parts, ', ') .. '}'
end

-- Deep equality; numbers equal within 1e-9.
function T.same(a, b)
  if a == b then return true end
  if type(a) == 'number' and type(b) == 'number' then return math.abs(a - b) < 1e-9 end
  if type(a) ~= 'table' or type(b) ~= 'table' then return false end
  for k, v in pairs(a) do if not T.same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function T.eq(actual, expected, what)
  if not T.same(actual, expected) then
    error(string.format('%s: expected %s, got %s', what or 'value', T.show(expected), T.show(actual)), 2)
  end
end

function T.is(actual, expected, what)
  if rawequal(actual, expected) then return end
  error(string.format('%s: expected the very object %s, got %s', what or 'value',
                      tostring(expected), tostring(actual)), 2)
end

function T.ok(cond, what)
  if not cond then error((what or 'condition') .. ': expected true, got ' .. tostring(cond), 2) end
end

function T.contains(s, part, what)
  if type(s) ~= 'string' or not s:find(part, 1, true) then
    error(string.format('%s: expected a string containing %q, got %s', what or 'message', part, T.show(s)), 2)
  end
end

-- Run every test whose name contains arg[1] (all without it); `around`, if
-- given, runs before and after each test (to reset shared state).
function T.run(suite, around)
  local pattern = arg and arg[1]
  local passed, failed = 0, 0
  for _, t in ipairs(tests) do
    if not pattern or t.name:find(pattern, 1, true) then
      if around then around() end
      local good, err = pcall(t.fn)
      if around then around() end
      if good then
        passed = passed + 1
      else
        failed = failed + 1
        print('FAIL ' .. t.name .. ': ' .. tostring(err))
      end
    end
  end
  print(string.format('%s: %d passed, %d failed', suite, passed, failed))
  os.exit(failed == 0 and 0 or 1)
end

return T
