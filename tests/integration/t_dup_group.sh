# A host controlling two routers tries to count every source batch twice
# (tests/attack/router.lua, MODE=dup-group, under uid 65534 with no key of
# the pipeline): hop 1 delivers every source batch to BOTH stage-1 workers
# (a stateless map) as normal deliveries; hop 2 holds their outputs and
# hands the two of each source batch to the one stateful stage-2 worker (a
# reduce) next to each other, so they fall in one group. Their (producer,
# seq) differ, so the replay window passes both; the reducer rejects the
# second, whose lineage overlaps its open group's (docs/protocol.md, rule 5).
# In the enclave mode (the stages in enclaves) and the encrypted mode:
#   - the control: the hostile router relays honestly (each batch to one of
#     the two map workers): every row, complete, exit 0;
#   - the attack, the reducer grouping up to 64 batches (every twin in the
#     reducer's one group): each of the 37 twins rejected and named, every
#     row once, complete, exit 0;
#   - the attack with the default group of 32 batches: a group boundary can
#     fall between twins, then the second is alone in the next partial; the
#     router before the sink drops that partial as a duplicate. Exact and
#     complete, or INCOMPLETE: never a wrong total called complete.
. "$(dirname "$0")/lib.sh"
ROWS=3000
F=$(flights $ROWS)
"$SS" keygen -o "$T/key" >/dev/null 2>&1
export SS_STREAM=7013 SS_KEY_FILE="$T/key"
printf 'return function(stream)\n  return stream:map(function(line) return line end)\nend\n' >"$T/map.lua"
printf 'return function(stream)\n  return stream:reduce(function(acc, e) return acc + 1 end, 0)\nend\n' >"$T/count.lua"
printf 'return function(stream)\n  local n = 0\n  stream:subscribe(function(v) n = n + v end, nil, function() print("total " .. n) end)\nend\n' >"$T/sum.lua"
new_run() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

chmod 711 "$T"
AS_ATTACKER="setpriv --reuid=65534 --regid=65534 --clear-groups"

# attack NAME MODE enclave|encrypted [VAR=VALUE...]: the source publishes to
# the attacker's hop 1; mapA and mapB (stage 1) go from hop 1 to hop 2, the
# reducer (stage 2) from hop 2 to the honest router r2, the sink behind r2.
# VAR=VALUE go to the reducer's environment. The sink's exit status in RC,
# its output in $T/NAME.out, its log in $T/NAME.err, the reducer's in
# $T/NAME.reduce.log.
attack() {
    _an=$1 _am=$2 _ae=$3
    shift 3
    _ar=$(new_run)
    rm -f "$T/h.ready" "$T/reduce.log" "$T/sink.log"
    env MODE="$_am" FROM2='tcp://127.0.0.1:*' TO2='tcp://127.0.0.1:*' \
        sh -c 'exec '"$AS_ATTACKER"' "$0" lua "$1" >&3' "$SS" "$ROOT/tests/attack/router.lua" \
        3>"$T/h.ready" 2>>"$T/$_an.attacker.log" &
    PIDS="$PIDS $!"
    wait_ready "$T/h.ready" || { notok "$_an: the attacker starts" "$(tail -3 "$T/$_an.attacker.log")"; return 1; }
    read -r _ H1F H1B H2F H2B <"$T/h.ready"
    start_router r2 || return 1
    _enc=""
    [ "$_ae" = enclave ] && _enc=SS_ENCLAVE=isolated
    start_ready reduce env $_enc "$@" "$SS" worker --from "$H2B" --to "$FRONT_r2" --script "$T/count.lua" \
        --name reduce --stage reduce --pos 2 --run "$_ar" --ready-fd 3 || return 1
    for _aw in mapA mapB; do
        start_ready $_aw env $_enc "$SS" worker --from "$H1B" --to "$H2F" --script "$T/map.lua" \
            --name $_aw --stage map --pos 1 --run "$_ar" --ready-fd 3 || return 1
    done
    SS_POS=3 start_ready sink timeout 60 "$SS" sink --from "$BACK_r2" --script "$T/sum.lua" --run "$_ar" \
        --ready-fd 3 >"$T/$_an.out" || return 1
    _as=$LAST
    "$SS" source --to "$H1F" --input "$F" --batch-bytes 8192 --run "$_ar" >/dev/null 2>"$T/$_an.source.err" &
    PIDS="$PIDS $!"
    wait "$_as"
    RC=$?
    cp "$T/sink.log" "$T/$_an.err"
    cp "$T/reduce.log" "$T/$_an.reduce.log"
    stop_all
}

# The number of batches the source sent, from its statistics in the summary.
batches() { sed -n 's/.*complete: all \([0-9]*\) source batches accounted for.*/\1/p' "$T/$1.err"; }
# A column of a stage's line in the summary table: NAME STAGE COLUMN (in 3,
# rejected 7).
column() { awk -v s="$2" -v c="$3" '$1 == s { print $c }' "$T/$1.err"; }

complete_exact() { # NAME
    check "$1: exit 0" test "$RC" -eq 0
    check "$1: every row once (total $ROWS)" grep -qx "total $ROWS" "$T/$1.out"
    check "$1: complete" grep -q 'complete: all [0-9]* source batches accounted for' "$T/$1.err"
}

for MODE in enclave encrypted; do
    # the control: an honest relay, each batch to one map worker
    attack relay-$MODE relay $MODE && complete_exact relay-$MODE
    check "relay-$MODE: the map stage got each row once ($(column relay-$MODE map 3) events in)" \
        test "$(column relay-$MODE map 3)" = $ROWS
    check "relay-$MODE: the reducer rejected nothing" test "$(column relay-$MODE reduce 7)" = 0

    # the attack, every twin in one group of the reducer
    attack dup-$MODE dup-group $MODE SS_GROUP=64 SS_IDLE_MS=20000 && complete_exact dup-$MODE
    N=$(batches dup-$MODE)
    check "dup-$MODE: the attacker gave each map worker every batch ($(column dup-$MODE map 3) events in)" \
        test "$(column dup-$MODE map 3)" = $((2 * ROWS))
    check "dup-$MODE: the reducer rejected each twin (${N:-?} batches, $(column dup-$MODE reduce 7) rejected)" \
        test -n "$N" -a "$(column dup-$MODE reduce 7)" = "$N"
    check "dup-$MODE: and counted each row once ($(column dup-$MODE reduce 3) events in)" \
        test "$(column dup-$MODE reduce 3)" = $ROWS
    check "dup-$MODE: the reducer named the shared lineage" \
        grep -Eq 'rejected batch [0-9]+ of producer [0-9a-f]{16}: lineage [0-9a-f]{16}#[0-9]+ already in this partial' \
        "$T/dup-$MODE.reduce.log"

    # the attack, the default group: a boundary may fall between twins
    attack dup32-$MODE dup-group $MODE
    if grep -q 'complete: all' "$T/dup32-$MODE.err"; then
        complete_exact dup32-$MODE
    else
        check "dup32-$MODE: INCOMPLETE, exit 4" test "$RC" -eq 4
        check "dup32-$MODE: missing batches named" \
            grep -q 'summary: .*INCOMPLETE: [0-9]* of [0-9]* source batches accounted for; missing' "$T/dup32-$MODE.err"
    fi
    check "dup32-$MODE: the reducer rejected twins" test "$(column dup32-$MODE reduce 7)" -gt 0
done
