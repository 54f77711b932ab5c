# A worker killed mid-stream: its unacknowledged batches are re-dispatched,
# the results stay exact (no loss, no double count), the run exits 0.
. "$(dirname "$0")/lib.sh"
F=$(flights 1000000)
expected "$F" >"$T/expected"
SPEC="$ROOT/tests/fixtures/slow.spec.lua"

kill_test() { # stage victim_name
    # in a session of its own, so only this run's workers can be picked
    setsid "$SS" run "$SPEC" --input "$F" --summary-json "$T/s.json" >"$T/out" 2>"$T/err" &
    run=$!
    PIDS="$PIDS $run"
    victim=""
    i=0
    while [ -z "$victim" ] && [ $i -lt 200 ]; do
        # wait until the victim has been working for a while
        victim=$(pgrep -s $run -f "securestreams worker .*--name $2 " | head -1)
        i=$((i + 1))
        sleep 0.05
    done
    sleep 1.5
    kill -9 "$victim" 2>/dev/null
    wait "$run"
    rc=$?
    check "$1 killed: run exits 0" test "$rc" -eq 0
    check "$1 killed: the kill happened mid-stream" grep -q "$2 was killed by signal 9" "$T/err"
    results "$T/out" >"$T/actual"
    same "$1 killed: results equal awk" "$T/expected" "$T/actual"
    check "$1 killed: summary complete" grep -q '"complete":true' "$T/s.json"
    [ "$rc" -eq 0 ] || tail -30 "$T/err"
}
kill_test mapper 'mapper#2'
kill_test reducer 'reducer#1'
# Ctrl-C: the run stops every component and says so.
setsid "$SS" run "$SPEC" --input "$F" >"$T/out" 2>"$T/err" &
sid=$!
sleep 1.5
kill -INT $sid
wait $sid
rc=$?
check "interrupted: exit status 130" test $rc -eq 130
check "interrupted: says so" grep -q 'interrupted, stopping every component' "$T/err"
sleep 0.2
check "interrupted: no process left behind" sh -c "! pgrep -s $sid >/dev/null"
