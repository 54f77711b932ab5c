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
#    pipeline (control: the same router relaying honestly);
#  - lineage claims: batches naming a million lineage ids each are refused
#    and the router's memory stays under its bound; at the limit of 4096
#    their claims count in the bound and the producer stalls (controls: at
#    the limit batches are stored; with one id each nothing stalls);
#  - an early end of stream from a stranger does not end the stream of a
#    live source (control: before any other producer joined it does, and
#    the sink says the result is incomplete);
#  - decoder bombs (below).
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

# ---- lineage claims -----------------------------------------------------------
# A producer inside its window whose batches name many lineage ids, each of
# which would cost the router a claim (protocol.md, rule 3). A batch naming
# more than 4096 is refused (RECEIPT flagged REFUSED), the log naming the
# producer and the count; the claims of a batch the router stores count in
# its bound (rule 2), 128 bytes an id, so with no consumer the producer
# stalls and the router's peak RSS stays under its own, plus max_bytes +
# W x (M + 4096 x 128) + 17 M, M the message size. The attack as found: 8
# batches of 1,048,000 ids (16 MiB frames), which took a router with this
# bound to 925 MB. Controls in the same harness: 4096 ids a batch are
# stored (until the bound withholds receipts: only about 8 MiB / 576 KiB of
# them are receipted), one id a batch are all receipted.
lineage() { # NAME IDS COUNT
    rm -f "$T/r0.log"
    start_router r0 --max-bytes $MAX --max-window 8 --linger-ms 60000 || return 1
    r0=$LAST
    idle=$(vmhwm_kb $r0)
    nobody "$ATT/rogue_producer" lineage "$FRONT_r0" --ids "$2" --count "$3" --bytes 100 \
        --stall-ms 2000 --name rogue >"$T/rogue.out" 2>&1
    hwm=$(vmhwm_kb $r0)
    stop $r0
    msg=$((40 + 16 * $2 + 120))
    bound=$((idle + (MAX + 8 * (msg + 4096 * 128) + 17 * msg) / 1024))
    echo "# $1: router r0 peak RSS ${hwm} kB (idle ${idle} kB), bound ${bound} kB; $(cat "$T/rogue.out")"
}
lineage "lineage flood" 1048000 8
check "lineage flood: every batch receipted REFUSED" grep -q '^lineage: sent 8 batches .*receipts 8 (refused 8)' "$T/rogue.out"
check "lineage flood: the router names the producer and the count" grep -q \
    'refused batch 0 from producer rogue: its lineage names 1048000 source batches, more than the 4096 a message may name' \
    "$T/r0.log"
check "lineage flood: no claim made" test "$(stat_of r0 'lineage claims')" -eq 0
check "lineage flood: router peak RSS ${hwm} kB under the bound ${bound} kB" test "$hwm" -lt "$bound"

lineage "lineage at the limit (control)" 4096 200
receipts=$(sed -n 's/.*receipts \([0-9]*\) (refused 0).*/\1/p' "$T/rogue.out")
check "lineage at the limit: stored, nothing refused" test "${receipts:-0}" -gt 0
check "lineage at the limit: claims held up to the bound, then the producer stalls" \
    grep -q 'stalled' "$T/rogue.out"
check "lineage at the limit: ${receipts} receipts, what the bound allows with claims counted" \
    test "${receipts:-999}" -le $((MAX / (4096 * (16 + 128)) + 1))
check "lineage at the limit: router peak RSS ${hwm} kB under the bound ${bound} kB" test "$hwm" -lt "$bound"

lineage "lineage of one id (control)" 1 200
check "lineage of one id: all 200 receipted, no stall" grep -q '^lineage: sent 200 batches .*receipts 200 (refused 0), window 8$' "$T/rogue.out"

# ---- an early end of stream ---------------------------------------------------
# Encrypted mode, no CurveZMQ: a stranger joins the first router as a
# producer and publishes an empty end of stream (no member, no statistics)
# while the source is still reading its input (a pipe, fed in two halves).
# The router waits for every live
# producer that joined and has not sent its own end of stream (rule 6): the
# result is exact and complete. Control: the same end of stream before any
# other producer joined ends the stream at once (what a stranger can still
# do where CurveZMQ does not keep it out), and the sink names the result
# incomplete (exit 4).
early_eos() { # NAME BEFORE_THE_SOURCE(0 or 1)
    stop_all
    rm -f "$T/r0.log" "$T/in"
    mkfifo "$T/in"
    start_router r0 || return 1
    SS_KEY_FILE="$T/key" bg timeout 60 "$SS" sink --from "$BACK_r0" \
        --script "$ROOT/tests/fixtures/count-sink.lua" --run "$RUN" >"$T/sink.out" 2>"$T/sink.err"
    sink=$LAST
    wait_for 10 grep -q 'consumer .* joined' "$T/r0.log" || return 1
    if [ "$2" = 1 ]; then
        nobody "$ATT/rogue_producer" eos-empty "$FRONT_r0" --count 0 --name stranger >"$T/rogue.out" 2>&1
    fi
    SS_KEY_FILE="$T/key" bg "$SS" source --to "$FRONT_r0" --input "$T/in" --batch-bytes 8192 \
        --run "$RUN" 2>"$T/source.err"
    exec 7>"$T/in"
    head -n 1501 "$F3" >&7
    if [ "$2" = 0 ]; then
        wait_for 10 grep -q 'producer source (id [0-9a-f]*) joined' "$T/r0.log"
        nobody "$ATT/rogue_producer" eos-empty "$FRONT_r0" --count 0 --name stranger >"$T/rogue.out" 2>&1
    fi
    check "$1: the stranger's end of stream was accepted" \
        grep -q 'EOS from producer stranger (id [0-9a-f]*) listing 0 members' "$T/r0.log"
    tail -n +1502 "$F3" >&7
    exec 7>&-
    wait $sink
    status=$?
    echo "# $1: sink exit $status, $(cat "$T/sink.out")"
}
F3=$(flights 3000)
RUN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
early_eos "early end of stream" 0
check "early end of stream: the sink's result is complete (exit 0)" test "$status" -eq 0
check "early end of stream: every record counted" grep -qx 'records 3000' "$T/sink.out"
early_eos "early end of stream before the source (control)" 1
check "early end of stream, control: the sink names the result incomplete (exit 4)" test "$status" -eq 4
check "early end of stream, control: the router ended with nothing in" \
    grep -q 'end of stream: every producer finished, 0 batches in' "$T/r0.log"
stop_all

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
