# Bad input gets a clear message naming where, nothing crashes, nothing is
# dropped silently.
# tier: fast
. "$(dirname "$0")/lib.sh"
SPEC="$ROOT/examples/flights/flights.spec.lua"
F=$(flights 20000)
expected "$F" >"$T/expected"

# Three bad lines inserted after data line 100 (file lines 102..104).
{
    head -n 101 "$F"
    echo '2007,1,1,1,"unterminated,AA'
    echo '2007,1,2,3'
    echo ''
    tail -n +102 "$F"
} >"$T/dirty.csv"
"$SS" run "$SPEC" --input "$T/dirty.csv" --summary-json "$T/s.json" >"$T/out" 2>"$T/err"
check "dirty input: exit 0 under on_error=skip" test $? -eq 0
results "$T/out" >"$T/actual"
same "dirty input: results equal awk on the clean rows" "$T/expected" "$T/actual"
check "dirty input: malformed CSV names its line" grep -q 'input line 102: .*unterminated' "$T/err"
check "dirty input: too few fields names its line" grep -q 'input line 103: .*expected 29 fields, got 4' "$T/err"
check "dirty input: empty line named" grep -q ':104: empty line skipped' "$T/err"
check "dirty input: summary counts 2 skipped in the mapper" \
    sh -c "grep -E '^ +mapper +[0-9]+ +20002 +20000 +2 ' '$T/err'"
check "dirty input: summary counts the empty line at the source" \
    sh -c "grep -E '^ +source +1 +20004 +20002 +1 ' '$T/err'"

"$SS" run "$SPEC" --input "$T/dirty.csv" --on-error fail >"$T/out" 2>"$T/err"
rc=$?
check "on-error fail: exit status 3" test $rc -eq 3
check "on-error fail: names stage and line" grep -q 'stage mapper, input line 102' "$T/err"

: >"$T/empty.csv"
"$SS" run "$SPEC" --input "$T/empty.csv" >"$T/out" 2>"$T/err"
check "empty file: exit 1" test $? -eq 1
check "empty file: says so" grep -q 'empty file' "$T/err"

head -n 1 "$F" >"$T/header.csv"
"$SS" run "$SPEC" --input "$T/header.csv" >"$T/out" 2>"$T/err"
check "header-only file: exit 0" test $? -eq 0
check "header-only file: warns" grep -q 'no records after the header' "$T/err"
check "header-only file: no results" test "$(results "$T/out" | wc -l)" -eq 0

"$SS" run "$SPEC" --input "$T/missing.csv" >"$T/out" 2>"$T/err"
check "missing file: exit 1" test $? -eq 1
check "missing file: names it" grep -q "cannot read input $T/missing.csv: No such file" "$T/err"

"$SS" run "$ROOT/tests/fixtures/boom.spec.lua" --input "$F" --summary-json "$T/s.json" >"$T/out" 2>"$T/err"
check "Lua error in user code: run completes" test $? -eq 0
aa=$(grep -c '^AA ' "$T/expected")
check "Lua error in user code: AA records skipped" test "$(grep -c '^AA ' "$T/out")" -eq 0
check "Lua error in user code: logged with stage and message" grep -q 'stage boom, event [0-9]* of batch .*boom on AA' "$T/err"
n_aa=$(awk -F, 'NR > 1 && $9 == "AA"' "$F" | wc -l)
check "Lua error in user code: every AA record counted as skipped" \
    sh -c "grep -E '^ +boom +2 +[0-9]+ +[0-9]+ +$n_aa ' '$T/err'"

"$SS" run "$ROOT/tests/fixtures/noreturn.spec.lua" --input "$F" >"$T/out" 2>"$T/err"
check "script without a function: exit 1" test $? -eq 1
check "script without a function: says so" grep -q 'noreturn.lua: the script must return a function' "$T/err"

"$SS" run "$ROOT/tests/fixtures/typo.spec.lua" --input "$F" >"$T/out" 2>"$T/err"
check "spec typo: exit 2" test $? -eq 2
check "spec typo: names the field" grep -q "stages\[1\]: unknown field 'worker'" "$T/err"

"$SS" run "$SPEC" --input "$F" --security bogus >"$T/out" 2>"$T/err"
check "unknown security mode: refused" test $? -eq 2
check "unknown security mode: named" grep -q "unknown security mode 'bogus'" "$T/err"
