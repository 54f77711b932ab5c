# A worker killed mid-stream: its unacknowledged batches are re-dispatched,
# the results stay exact (no loss, no double count), the run exits 0.
. "$(dirname "$0")/lib.sh"
F=$(flights 1000000)
expected "$F" >"$T/expected"
SPEC="$ROOT/tests/fixtures/slow.spec.lua"

# redelivered STAGE: the batches that stage received again, from the summary
redelivered() {
    "$SS" lua -e "local s = require('json').decode(io.open('$T/s.json'):read('a'))
        for _, st in ipairs(s.stages) do if st.stage == '$1' then print(st.redelivered) end end"
}
# rejected: the batches every stage and the sink rejected, from the summary (an honest
# run rejects none: a redelivered batch is a partial of its own, and a
# re-processed copy is parked, then dropped, by the router)
rejected() {
    "$SS" lua -e "local s = require('json').decode(io.open('$T/s.json'):read('a'))
        local n = s.sink.rejected for _, st in ipairs(s.stages) do n = n + st.rejected end print(n)"
}
find_victim() { # NAME: sets victim, the pid of this run's worker NAME
    victim=$(pgrep -s $run -f "securestreams worker .*--name $1 " | head -1)
    [ -n "$victim" ]
}
kill_test() { # stage victim_name
    # in a session of its own, so only this run's workers can be picked
    setsid "$SS" run "$SPEC" --input "$F" --summary-json "$T/s.json" >"$T/out" 2>"$T/err" &
    run=$!
    PIDS="$PIDS $run"
    victim=""
    poll_until 10 find_victim "$2"
    # killed mid-stream: once it has done some of its work, long before all
    wait_for 30 busy "${victim:-0}" 300
    kill -9 "$victim" 2>/dev/null
    wait "$run"
    rc=$?
    check "$1 killed: run exits 0" test "$rc" -eq 0
    check "$1 killed: the kill happened mid-stream" grep -q "$2 was killed by signal 9" "$T/err"
    results "$T/out" >"$T/actual"
    same "$1 killed: results equal awk" "$T/expected" "$T/actual"
    check "$1 killed: summary complete" grep -q '"complete":true' "$T/s.json"
    # the recovery ran: the dead worker's batches reached the other worker again
    n=$(redelivered "$1")
    check "$1 killed: its batches were redelivered (${n:-none})" test "${n:-0}" -gt 0
    n=$(rejected)
    check "$1 killed: no stage rejected a batch (${n:-no summary})" test "${n:-1}" -eq 0
    [ "$rc" -eq 0 ] || tail -30 "$T/err"
}
kill_test mapper 'mapper#2'
kill_test reducer 'reducer#1'
# Ctrl-C: the run stops every component and says so.
setsid "$SS" run "$SPEC" --input "$F" >"$T/out" 2>"$T/err" &
sid=$!
# once every component runs: the source is started last
source_runs() { pgrep -s $sid -f 'securestreams source' >/dev/null; }
wait_for 30 source_runs
kill -INT $sid
wait $sid
rc=$?
check "interrupted: exit status 130" test $rc -eq 130
check "interrupted: says so" grep -q 'interrupted, stopping every component' "$T/err"
check "interrupted: no process left behind" poll_until 2 session_empty $sid
