# Single-process scripts in the style of the seed's Listings 5.1 and 8.2.
# tier: fast
. "$(dirname "$0")/lib.sh"
cat >"$T/adults.lua" <<'LUA'
local Rx = require 'rx'
local people = { { age = 12 }, { age = 30 }, { age = 40 }, { age = 17 }, { age = 50 } }
Rx.Observable.fromTable(people)
  :map(function(person) return person.age end)
  :filter(function(age) return age > 18 end)
  :reduce(function(acc, age)
    acc.count = (acc.count or 0) + 1
    acc.sum = (acc.sum or 0) + age
    return acc
  end, {})
  :subscribe(function(d) print('Adult people average:', d.sum / d.count) end,
             function(err) print(err) end,
             function() print('Process complete!') end)
LUA
"$SS" lua "$T/adults.lua" >"$T/out" 2>&1
check "Listing 5.1 style script" grep -q 'Adult people average:	40.0' "$T/out"
check "Listing 5.1 style script completes" grep -q 'Process complete!' "$T/out"
F=$(flights 100000)
expected "$F" >"$T/expected"
"$SS" lua "$ROOT/examples/flights/single.lua" "$F" >"$T/out"
results "$T/out" >"$T/actual"
same "Listing 8.2 style single process equals awk" "$T/expected" "$T/actual"
check "a script error exits 1 with its message" sh -c "'$SS' lua -e 'error(\"bad thing\")' 2>&1 | grep -q 'bad thing'; test \$? -eq 0 && ! '$SS' lua -e 'error(1)' 2>/dev/null"
check "csv and json are available" sh -c "'$SS' lua -e 'local c=require\"csv\".parse(\"a,\\\"b,c\\\"\"); local j=require\"json\"; assert(c[2]==\"b,c\"); assert(j.decode(j.encode({x=1})).x==1)'"
check "csv.fields: count and chosen columns, nil past the end" sh -c "'$SS' lua -e '
local csv = require \"csv\"
local n, b, d, z, a = csv.fields(\"a,\\\"b,c\\\",d\", 2, 3, 5, 1)
assert(n == 3 and b == \"b,c\" and d == \"d\" and z == nil and a == \"a\", \"fields\")
assert(not pcall(csv.fields, \"a,\\\"b\", 1), \"malformed line accepted\")'"
# a script gets every argument, however many (the Lua stack grows for them)
printf 'print(select("#", ...), #arg, arg[0] ~= nil)\n' >"$T/count.lua"
"$SS" lua "$T/count.lua" $(seq 500) >"$T/count.out" 2>&1
check "lua: 500 script arguments reach the script" grep -qx "500	500	true" "$T/count.out"
check "lua: every -e runs, in order" sh -c "test \"\$('$SS' lua -e 'x = 1' -e 'x = x * 10' -e 'print(x + 1)')\" = 11"
