# The delayed-flights pipeline through `run` equals the awk reference for
# 1, 2 and 4 workers per stage and for uneven counts, on 1 million rows
# (100 000 in the fast tier).
# tier: fast
. "$(dirname "$0")/lib.sh"
N=$(rows 1000000 100000)
F=$(flights "$N")
expected "$F" >"$T/expected"
check "awk reference has 20 carriers" test "$(wc -l <"$T/expected")" -eq 20
for w in 1 2 4 3,2,1 1,3,2; do
    if run_same "run --workers $w equals awk" "$ROOT/examples/flights/flights.spec.lua" \
        --input "$F" --workers "$w" --summary-json "$T/summary.json"; then
        check "run --workers $w summary says complete" grep -q '"complete":true' "$T/summary.json"
        check "run --workers $w summary counts $N rows" grep -q "\"rows\":$N" "$T/summary.json"
    fi
done
# Stages fused in each worker: one stage of workers, no routers between them.
for w in 1 3; do
    "$SS" run "$ROOT/examples/flights/flights.spec.lua" --input "$F" --fuse --workers $w \
        --summary-json "$T/summary.json" >"$T/out" 2>"$T/err"
    check "run --fuse --workers $w: exit 0" test $? -eq 0
    results "$T/out" >"$T/actual"
    same "run --fuse --workers $w equals awk" "$T/expected" "$T/actual"
    check "run --fuse --workers $w: one fused stage" grep -q '"stage":"mapper+filter+reducer"' "$T/summary.json"
done
# Every component a run starts belongs to its session; none outlives it.
setsid "$SS" run "$ROOT/examples/flights/flights.spec.lua" --input "$F" --workers 2 >/dev/null 2>&1 &
sid=$!
wait $sid
check "no process left behind" session_empty $sid
