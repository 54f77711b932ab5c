# Attacks on a router, each run as the attacker would (tests/attack/*, as
# nobody, real ZeroMQ sockets), each with a control in the same harness:
#  - flood: a producer ignoring its window cannot push the router's memory
#    past the documented bound, is evicted and named, and the pipeline's
#    result stays exact (control: with the window cap lifted the same flood
#    does push the router's peak RSS past that bound);
#  - squat: a producer claiming the source's future lineage ids cannot make
#    the router drop the real batches in the encrypted mode (the consumers
#    reject the squatter's, the router forgets their claims); in plain mode
#    it can, and the drops are logged naming both producers (the control:
#    the harness does see a squat when one succeeds);
#  - LATE: a router flagging every end of stream LATE does not stall the
#    pipeline (control: the same router relaying honestly).
. "$(dirname "$0")/lib.sh"
E="$ROOT/examples/flights"
ATT="$SS_BUILD/attack"
F=$(flights 100000)
expected "$F" >"$T/expected"
"$SS" keygen -o "$T/key" >/dev/null 2>&1
SRC_ID=0x5eed0001
SRC_HEX=000000005eed0001
BATCH=1048576

nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
vmhwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
# the router's closing statistics line, after it stopped
stat_of() { sed -n "s/.*batches in .*[ ,]$2 \([0-9]*\).*/\1/p" "$T/$1.log" | tail -1; }

# workers KEYARGS R0 R1 R2 R3: one mapper, filter and reducer between them
workers() {
    bg "$SS" worker $1 --from "$2" --to "$3" --script "$E/mapper.lua" --name mapper
    bg "$SS" worker $1 --from "$4" --to "$5" --script "$E/filter.lua" --name filter
    bg "$SS" worker $1 --from "$6" --to "$7" --script "$E/reducer.lua" --name reducer
}

# source KEYFILE FRONT: the seed-style source with the fixed id SRC_ID
source_bg() {
    SS_ID=$SRC_ID SS_NAME=source SS_KEY_FILE=$1 DATA_FILE=$F TO=$2 \
        bg "$SS" lua "$E/seed/data-stream.lua"
}

# sink NAME KEYARGS BACK: the printer; NAME ok when the results equal awk
sink_same() {
    if timeout 120 "$SS" sink $2 --from "$3" --script "$E/printer.lua" >"$T/out" 2>"$T/sink.err"; then
        results "$T/out" >"$T/actual"
        same "$1" "$T/expected" "$T/actual"
    else
        notok "$1" "the sink's exit status $?"
        tail -5 "$T/sink.err"
    fi
}

# ---- flood ------------------------------------------------------------------
# The router holds at most max_bytes plus one window of batches per producer
# (docs/protocol.md, rule 2), plus what libzmq buffers per connection (the
# router's RCVHWM of 16 messages, and the one being read). Here: two
# producers with a window of 8 batches of about 1 MiB, one flooding
# connection, 8 MiB bound, over the router's own RSS before any traffic.
MAX=8388608
flood() { # NAME MAX_WINDOW ROGUE_WINDOW
    rm -f "$T/r0.log"
    start_router r0 --max-bytes $MAX --max-window "$2" --linger-ms 60000 || return 1
    r0=$LAST
    idle=$(vmhwm_kb $r0)
    # Nobody consumes yet: the worst case for the bound.
    nobody "$ATT/rogue_producer" flood "$FRONT_r0" --count 90 --bytes $BATCH --window "$3" \
        --name rogue >"$T/rogue.out" 2>&1
    check "$1: the rogue sent 90 MiB" grep -q '^flood: sent 90 batches' "$T/rogue.out"
    for r in r1 r2 r3; do start_router $r || return 1; done
    workers "--key $T/key" "$BACK_r0" "$FRONT_r1" "$BACK_r1" "$FRONT_r2" "$BACK_r2" "$FRONT_r3"
    source_bg "$T/key" "$FRONT_r0"
    sink_same "$1: results equal awk" "--key $T/key" "$BACK_r3"
    hwm=$(vmhwm_kb $r0)
    stop $r0
    bound=$((idle + (MAX + (8 + 8) * (BATCH + 4096) + 17 * (BATCH + 4096)) / 1024))
    echo "# $1: router r0 peak RSS ${hwm} kB (idle ${idle} kB), bound ${bound} kB;" \
        "overruns $(stat_of r0 overruns), evicted $(stat_of r0 evicted)"
}

flood "flood" 64 8
check "flood: router peak RSS ${hwm} kB under the bound ${bound} kB" test "$hwm" -lt "$bound"
check "flood: overruns counted" test "$(stat_of r0 overruns)" -gt 0
check "flood: the rogue evicted and named" \
    grep -q 'evicted producer rogue (id [0-9a-f]*): 9 batches beyond its window of 8' "$T/r0.log"
check "flood: peak held within max_bytes and two windows" \
    test "$(sed -n 's/.*peak held \([0-9]*\) bytes.*/\1/p' "$T/r0.log")" -le $((MAX + 16 * (BATCH + 4096)))

flood "flood control (window cap lifted)" 1024 1024
check "flood control: router peak RSS ${hwm} kB over the bound ${bound} kB" test "$hwm" -gt "$bound"
check "flood control: no overrun to count" test "$(stat_of r0 overruns)" -eq 0

# ---- lineage squatting -----------------------------------------------------
squat() { # NAME KEYFILE (empty: plain)
    rm -f "$T/r0.log"
    start_router r0 || return 1
    r0=$LAST
    # The squatter claims the source's first five batches before they exist
    # (a network attacker reads the source id in any header; here it is fixed).
    nobody "$ATT/rogue_producer" squat "$FRONT_r0" --source $SRC_ID --first 0 --count 5 \
        --bytes 4096 --name rogue >"$T/rogue.out" 2>&1
    check "$1: the squatter's 5 batches were receipted" grep -q 'sent 5 batches .*receipts 5' "$T/rogue.out"
    source_bg "$2" "$FRONT_r0"
    src=$LAST
    # Every real batch reaches r0 before any consumer exists: the first five park.
    wait_for 30 gone $src
    for r in r1 r2 r3; do start_router $r || return 1; done
    workers "${2:+--key $2}" "$BACK_r0" "$FRONT_r1" "$BACK_r1" "$FRONT_r2" "$BACK_r2" "$FRONT_r3"
}

squat "squat, encrypted" "$T/key"
sink_same "squat, encrypted: results equal awk (exact and complete)" "--key $T/key" "$BACK_r3"
wait_for 30 gone $r0
check "squat, encrypted: the real batches were parked" test "$(stat_of r0 parked)" -eq 5
check "squat, encrypted: the squatter's batches rejected by the consumer" \
    test "$(stat_of r0 rejected)" -eq 5
check "squat, encrypted: claims forgotten, nothing dropped" test "$(stat_of r0 duplicates)" -eq 0
check "squat, encrypted: the router names the squatter" \
    grep -q 'rejected batch 0 of producer rogue (id' "$T/r0.log"

squat "squat, plain (control)" ""
if timeout 120 "$SS" sink --from "$BACK_r3" --script "$E/printer.lua" >"$T/out" 2>"$T/sink.err"; then
    results "$T/out" >"$T/actual"
    check "squat, plain: the squat succeeds (results differ from awk)" sh -c "! cmp -s '$T/expected' '$T/actual'"
else
    notok "squat, plain: the sink exits 0" "exit status $?"
fi
wait_for 30 gone $r0
check "squat, plain: five real batches dropped as duplicates" test "$(stat_of r0 duplicates)" -eq 5
check "squat, plain: each drop logged naming both producers" grep -q \
    "dropped batch 0 of producer source (id $SRC_HEX): lineage $SRC_HEX#0 already accepted from producer rogue" \
    "$T/r0.log"

# ---- LATE from a hostile router --------------------------------------------
late() { # NAME MODE
    start_router r0 || return 1
    start_ready r1 nobody "$ATT/late_router" "$2" --ready-fd 3 || return 1
    for r in r2 r3; do start_router $r || return 1; done
    workers "" "$BACK_r0" "$FRONT_r1" "$BACK_r1" "$FRONT_r2" "$BACK_r2" "$FRONT_r3"
    source_bg "" "$FRONT_r0"
    sink_same "$1: no stall, results equal awk" "" "$BACK_r3"
    wait_for 10 grep -q 'deliveries flagged LATE' "$T/r1.log"
}
late "LATE on every end of stream" late
check "LATE: the router did flag the end of stream" grep -q '; [1-9][0-9]* end-of-stream deliveries flagged LATE' "$T/r1.log"
rm -f "$T/r1.log"
late "LATE control (honest relay)" honest
check "LATE control: nothing flagged" grep -q '; 0 end-of-stream deliveries flagged LATE' "$T/r1.log"

# ---- decoder bombs -----------------------------------------------------------
# Plain mode, where nothing authenticates a batch: a hostile 1 MiB batch (60
# nested arrays, each declaring as many elements as there are bytes left)
# costs the worker that decodes it under 64 MiB in all, and is refused and
# named; a bomb in an end of stream's statistics is refused by the router
# before anything is built from it. Controls: the same worker decodes an
# honest 1 MiB batch of the same harness (its records are skipped as
# malformed, and said so); a well-formed end of stream is accepted.
bomb() { # NAME MODE
    rm -f "$T/r0.log" "$T/r1.log"
    start_router r0 || return 1
    r0=$LAST
    start_router r1 || return 1
    bg "$SS" worker --from "$BACK_r0" --to "$FRONT_r1" --script "$E/mapper.lua" --name mapper \
        2>"$T/worker.err"
    w=$LAST
    nobody "$ATT/rogue_producer" "$2" "$FRONT_r0" --count 1 --bytes $BATCH --name rogue \
        >"$T/rogue.out" 2>&1
    check "$1: the rogue's batch was receipted" grep -q 'sent [12] batches .*receipts [12]' "$T/rogue.out"
}
bomb "decoder bomb" bomb
wait_for 30 grep -q 'refused a batch' "$T/worker.err"
hwm=$(vmhwm_kb $w)
echo "# decoder bomb: the worker's peak RSS ${hwm} kB"
check "decoder bomb: refused and said so" grep -q 'refused a batch: .*truncated' "$T/worker.err"
check "decoder bomb: the worker's peak RSS ${hwm} kB under 64 MiB" test "$hwm" -lt 65536
check "decoder bomb: the worker goes on" kill -0 $w
stop_all
bomb "decoder bomb control (an honest 1 MiB batch)" honest
wait_for 30 grep -q 'skipped' "$T/worker.err"
hwm=$(vmhwm_kb $w)
echo "# decoder bomb control: the worker's peak RSS ${hwm} kB"
check "decoder bomb control: the worker decoded the batch and skipped its records" \
    grep -q 'skipped' "$T/worker.err"
check "decoder bomb control: nothing refused" sh -c "! grep -q 'refused a batch' '$T/worker.err'"
stop_all

bomb "end-of-stream bomb" eos-bomb
wait_for 30 grep -q 'refused batch 1 from producer rogue' "$T/r0.log"
check "end-of-stream bomb: refused by the router, naming the producer" \
    grep -q 'refused batch 1 from producer rogue: .*' "$T/r0.log"
check "end-of-stream bomb: the router's peak RSS $(vmhwm_kb $r0) kB under 64 MiB" \
    test "$(vmhwm_kb $r0)" -lt 65536
stop_all
bomb "end-of-stream bomb control (a well-formed end of stream)" eos
wait_for 30 grep -q 'EOS from producer rogue' "$T/r0.log"
check "end-of-stream control: accepted" grep -q 'EOS from producer rogue (id [0-9a-f]*) listing 1 members' "$T/r0.log"
stop_all
