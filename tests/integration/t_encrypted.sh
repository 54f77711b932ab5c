# The encrypted mode: results equal plain; no plaintext on the wire; tampered,
# replayed, dropped and forged batches are rejected and reported; a wrong key
# is an error at start.
. "$(dirname "$0")/lib.sh"
SPEC="$ROOT/examples/flights/flights.spec.lua"
F=$(flights 200000)
expected "$F" >"$T/expected"
"$SS" keygen -o "$T/key" >/dev/null 2>&1
"$SS" keygen -o "$T/other" >/dev/null 2>&1

for w in 1 2 3,2,1; do
    if run_same "encrypted, workers $w: results equal awk" "$SPEC" --input "$F" --workers $w \
        --security encrypted --key "$T/key" --summary-json "$T/s.json"; then
        check "encrypted, workers $w: complete" grep -q '"complete":true' "$T/s.json"
    fi
done

"$SS" encrypt -k "$T/key" "$F" "$T/sealed" 2>/dev/null
"$SS" run "$SPEC" --input "$T/sealed" --workers 2 --security encrypted --key "$T/key" >"$T/out" 2>"$T/err"
check "sealed input file streams as is: exit 0" test $? -eq 0
results "$T/out" >"$T/actual"
same "sealed input file: results equal awk" "$T/expected" "$T/actual"

"$SS" run "$SPEC" --input "$T/sealed" --security encrypted --key "$T/other" >"$T/out" 2>"$T/err"
check "wrong key: exit 1" test $? -eq 1
check "wrong key: says so at start" grep -q 'another key' "$T/err"
"$SS" run "$SPEC" --input "$T/sealed" >"$T/out" 2>"$T/err"
check "sealed file in plain mode: refused" grep -q 'is a sealed file' "$T/err"
"$SS" run "$SPEC" --input "$F" --security encrypted >"$T/out" 2>"$T/err"
check "encrypted without a key: refused" grep -q 'needs a data key' "$T/err"
cp "$T/key" "$T/loose" && chmod 644 "$T/loose"
"$SS" run "$SPEC" --input "$F" --security encrypted --key "$T/loose" >"$T/out" 2>"$T/err"
check "key readable by others: refused" grep -q 'readable or writable by others' "$T/err"
size=$(stat -c %s "$T/sealed")
head -c $((size / 2)) "$T/sealed" >"$T/truncated"
"$SS" run "$SPEC" --input "$T/truncated" --security encrypted --key "$T/key" >"$T/out" 2>"$T/err"
check "truncated sealed file: run fails" test $? -ne 0
check "truncated sealed file: says truncated" grep -qi 'truncated' "$T/err"

# A canary in the input never crosses a router in the clear.
awk -F, 'BEGIN { OFS = "," } NR > 1 && NR % 50 == 0 { $9 = "CANARY42" } { print }' "$F" >"$T/canary.csv"
CANARY='\\x43\\x41\\x4e\\x41\\x52\\x59\\x34\\x32'
traced_run() { # mode: wire a pipeline by hand, routers under strace
    rm -f "$T"/trace.*
    traced=""
    for r in r0 r1 r2 r3; do
        # (LeakSanitizer cannot run under ptrace: no leak check for these.)
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 start_ready $r \
            strace -f -qq -xx -s 200000 -e trace=sendto,recvfrom,sendmsg,recvmsg,write,read \
            -o "$T/trace.$r" "$SS" router --name $r --from 'tcp://127.0.0.1:*' \
            --to 'tcp://127.0.0.1:*' --ready-fd 3 || return 1
        traced="$traced $LAST"
    done
    E="$ROOT/examples/flights"
    bg "$SS" worker $1 --from "$BACK_r0" --to "$FRONT_r1" --script "$E/mapper.lua" --name mapper
    bg "$SS" worker $1 --from "$BACK_r1" --to "$FRONT_r2" --script "$E/filter.lua" --name filter
    bg "$SS" worker $1 --from "$BACK_r2" --to "$FRONT_r3" --script "$E/reducer.lua" --name reducer
    bg "$SS" source $1 --to "$FRONT_r0" --input "$T/canary.csv"
    timeout 120 "$SS" sink $1 --from "$BACK_r3" --script "$E/printer.lua" >"$T/out" 2>"$T/err"
    # The routers end with the stream: their traces are then complete.
    wait_for 10 gone $traced
}
traced_run "--key $T/key"
check "encrypted: canary reaches the sink" grep -q '^CANARY42 ' "$T/out"
check "encrypted: routers carried traffic" test "$(cat "$T"/trace.* | wc -c)" -gt 1000000
check "encrypted: canary never on the wire" sh -c "! grep -q '$CANARY' $T/trace.r0 $T/trace.r1 $T/trace.r2 $T/trace.r3"
traced_run ""
check "plain (control): canary on the wire" grep -q "$CANARY" "$T/trace.r0"

# A hostile router between the source and the sink. Wired by hand, so the
# run id is given to both ends (the sink then pins it).
RUN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
hostile() { # mode [on-error]
    # It prints its ready line on stdout: onto fd 3, where start_ready reads
    # it. (Our stdout is the caller's $(...): messages go to stderr.)
    MODE=$1 start_ready h sh -c 'exec "$0" lua "$1" >&3' "$SS" \
        "$ROOT/tests/fixtures/hostile-router.lua" >&2 || { echo 255; return; }
    hpid=$LAST
    "$SS" source --key "$T/key" --run "$RUN" --to "$FRONT_h" --input "$F" --batch-bytes 16384 \
        >/dev/null 2>"$T/src.err" &
    spid=$!
    PIDS="$PIDS $spid"
    timeout 60 "$SS" sink --key "$T/key" --run "$RUN" ${2:+--on-error $2} --from "$BACK_h" \
        --script "$ROOT/tests/fixtures/count-sink.lua" >"$T/out" 2>"$T/err"
    echo $?
    stop $hpid $spid
}
rc=$(hostile replay)
check "replayed batches: every record counted once" grep -q '^records 200000$' "$T/out"
check "replayed batches: rejected and named" grep -q 'rejected batch 0 of producer [0-9a-f]*: replayed' "$T/err"
check "replayed batches: result still complete, exit 0" sh -c "test $rc -eq 0 && grep -q 'complete: all' '$T/err'"
rc=$(hostile tamper)
check "tampered batch: rejected with authentication failure" grep -q 'rejected batch 1 of producer .*authentication' "$T/err"
check "tampered batch: summary names the missing batch" grep -q 'INCOMPLETE: .*missing [0-9a-f]*#1' "$T/err"
check "tampered batch: exit 4" test "$rc" -eq 4
rc=$(hostile tamper fail)
check "tampered batch with on-error fail: exit 3" test "$rc" -eq 3
rc=$(hostile drop)
check "dropped batch: summary names it" grep -q 'INCOMPLETE: .*missing [0-9a-f]*#2' "$T/err"
check "dropped batch: exit 4" test "$rc" -eq 4
rc=$(hostile forge)
check "forged end-of-stream statistics: ignored and reported" grep -q 'ignored the statistics of' "$T/err"
check "forged end-of-stream statistics: exit 4" test "$rc" -eq 4
