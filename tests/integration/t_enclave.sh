# The enclave mode: results equal plain; user code runs sealed off; neither
# the input's plaintext nor the data key ever reach a worker's host process
# or a router.
. "$(dirname "$0")/lib.sh"
SPEC="$ROOT/examples/flights/flights.spec.lua"
F=$(flights 200000)
expected "$F" >"$T/expected"
"$SS" keygen -o "$T/key" >/dev/null 2>&1
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }

for w in 1 2,2,2; do
    if run_same "enclave, workers $w: results equal awk" "$SPEC" --input "$F" --workers $w \
        --security enclave --key "$T/key" --summary-json "$T/s.json"; then
        check "enclave, workers $w: complete" grep -q '"complete":true' "$T/s.json"
    fi
done

# Only the mappers in enclaves (the seed's first configuration).
sed -e 's/{ name = "mapper",  script = "mapper.lua",  workers = 2 }/{ name = "mapper", script = "mapper.lua", workers = 2, enclave = true }/' \
    -e "s|script = \"|script = \"$ROOT/examples/flights/|" "$SPEC" >"$T/mapper-enclave.spec.lua"
"$SS" run "$T/mapper-enclave.spec.lua" --input "$F" --security encrypted --key "$T/key" >"$T/out" 2>"$T/err"
rc=$?
check "mappers only in enclaves: only the mapper stage has enclaves" test "$(grep -c 'enclave = true' "$T/mapper-enclave.spec.lua")" -eq 1
check "mappers only in enclaves: exit 0" test $rc -eq 0
results "$T/out" >"$T/actual"
same "mappers only in enclaves: results equal awk" "$T/expected" "$T/actual"

# Seed-style scripts with sgx-rx, wired by hand.
SS_KEY_FILE="$T/key" hand_wired "sgx-rx seed scripts wired by hand equal awk" \
    "$ROOT/examples/flights/sgx" 1 1 1 || exit 1

# Memory: a canary from the input and the key, looked for mid-run in every
# router and every worker's host process, and (control) in an enclave.
awk -F, 'BEGIN { OFS = "," } NR > 1 && NR % 50 == 0 { $9 = "CANARY42" } { print }' "$(flights 1000000)" >"$T/canary.csv"
KEYHEX=$(sed -n 's/^key //p' "$T/key")
# (A batch of the crawling mapper keeps its worker in the enclave for
# seconds, more on a busy machine: a liveness it cannot outlast.)
SS_LIVENESS_MS=60000 setsid "$SS" run "$ROOT/tests/fixtures/crawl-enclave.spec.lua" \
    --input "$T/canary.csv" --key "$T/key" >"$T/out" 2>"$T/err" &
run=$!
PIDS="$PIDS $run"
# Scan once every enclave is locked down (its key loaded) and data flows
# through them (they hold the canary).
locked_down() {
    children=$(pgrep -s $run -f 'securestreams enclave-child')
    [ -n "$children" ] || return 1
    for p in $children; do
        grep -q '^Seccomp:[[:space:]]*2' "/proc/$p/status" 2>/dev/null || return 1
    done
}
canary_inside=0
key_inside=0
enclaves_hold_both() {
    for p in $children; do
        # one pass, two counts: the canary, then the key
        counts=$("$SS_BUILD/memscan" "$p" "$(hex CANARY42)" "$KEYHEX" 2>/dev/null | tr '\n' ' ')
        set -- $counts
        [ "${1:-0}" -gt 0 ] && canary_inside=1
        [ "${2:-0}" -gt 0 ] && key_inside=1
    done
    [ $canary_inside -eq 1 ] && [ $key_inside -eq 1 ]
}
wait_for 60 locked_down
WAIT_EVERY=0.2 poll_until 30 enclaves_hold_both   # the control checks below report it
hosts=$(pgrep -s $run -f 'securestreams (worker|router) ')
found=0
for p in $hosts; do
    n=$("$SS_BUILD/memscan" "$p" "$(hex CANARY42)" "$KEYHEX" "$(hex "$KEYHEX")" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    found=$((found + n))
done
check "memory: the run was still going after the scan" kill -0 $run
kill -INT $run
wait $run
rc=$?
check "memory: scanned mid-run (hosts and enclaves found)" sh -c "test -n '$hosts' && test -n '$children'"
check "memory: canary and key absent from every router and worker host" test "$found" -eq 0
check "memory (control): the enclaves hold the canary" test "$canary_inside" -eq 1
check "memory (control): the enclaves hold the key" test "$key_inside" -eq 1
check "memory: the run then stops cleanly on Ctrl-C" test "$rc" -eq 130

# A stage that tries to escape: every attempt fails, the run goes on.
rm -f /tmp/securestreams-escape-*
"$SS" run "$ROOT/tests/fixtures/escape.spec.lua" --input "$F" --key "$T/key" --summary-json "$T/s.json" \
    >"$T/out" 2>"$T/err"
check "escape attempts: run completes" test $? -eq 0
check "escape attempts: io.open named as unavailable" grep -q 'io.open is not available in the enclave' "$T/err"
check "escape attempts: every record skipped" grep -q '^records 0$' "$T/out"
check "escape attempts: no file was created" sh -c "! ls /tmp/securestreams-escape-* 2>/dev/null"

# The measurement a key-release policy would check.
cp "$ROOT/examples/flights/mapper.lua" "$T/stage.lua"
m1=$("$SS" measure "$T/stage.lua" | cut -d' ' -f1)
m2=$("$SS" measure "$T/stage.lua" | cut -d' ' -f1)
echo '-- one more line' >>"$T/stage.lua"
m3=$("$SS" measure "$T/stage.lua" | cut -d' ' -f1)
check "measure: 64 hex digits" sh -c "echo '$m1' | grep -Eq '^[0-9a-f]{64}$'"
check "measure: stable" test "$m1" = "$m2"
check "measure: depends on the stage code" test "$m1" != "$m3"

# The seed's primitives: require 'sgx' (a mock without an enclave, named so).
cat >"$T/prim.lua" <<'LUA'
local sgx = require 'sgx'
local sealed = sgx.sgxencrypt({ 'a,1', 'b,2', 'c,3' })
assert(not sealed:find('b,2', 1, true), 'plaintext in a sealed batch')
local code = [[local csv = require 'csv'
return function(stream) return stream:map(function(l) local f = csv.parse(l); return f[1] .. f[2] end) end]]
print(sgx.mock, table.concat(sgx.sgxdecrypt(sgx.sgxprocess(code, sealed)), ' '))
LUA
check "sgx primitives without an enclave: a mock, named so" sh -c \
    "SS_KEY_FILE='$T/key' '$SS' lua '$T/prim.lua' | grep -qx 'true	a1 b2 c3'"
check "sgx primitives with the isolated enclave" sh -c \
    "SS_ENCLAVE=isolated SS_KEY_FILE='$T/key' '$SS' lua '$T/prim.lua' | grep -qx 'false	a1 b2 c3'"

# Many small allocations past the heap bound: the record fails with "not
# enough memory" and the isolated enclave keeps serving.
cat >"$T/heap.lua" <<'LUA'
local sgx = require 'sgx'
local hog = 'return function(s) return s:map(function(n) local t = {} for i = 1, n do t[i] = {i} end return #t end) end'
local _, r = sgx.sgxprocess(hog, sgx.sgxencrypt({ 100000000 }))
print(r.skipped, r.message:find('not enough memory', 1, true) ~= nil)
local again = sgx.sgxdecrypt(sgx.sgxprocess('return function(s) return s:map(function(n) return n + 1 end) end',
  sgx.sgxencrypt({ 41 })))
print(again[1])
LUA
check "heap bound: small allocations past it fail the record, the enclave goes on" sh -c \
    "SS_ENCLAVE=isolated SS_ENCLAVE_HEAP=64M SS_KEY_FILE='$T/key' '$SS' lua '$T/heap.lua' | tr '\\n\\t' '  ' | grep -qx '1 true 42 '"
