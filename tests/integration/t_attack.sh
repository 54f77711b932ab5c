# Attacks on a run's completeness, as the hosts of routers and workers would
# run them (tests/attack/router.lua, under uid 65534 with no key of the
# pipeline), against a real source, a real worker whose stage runs in an
# enclave (isolated backend) and a real sink, in the enclave mode:
#   - a source's statistics record swapped for one an enclave made under the
#     label "source", every batch dropped;
#   - an earlier run's batches and end of stream (same key) in place of this
#     run's, and an earlier empty run's end of stream;
#   - the first stage's output handed straight to the sink, past stage 2;
#   - batches sealed with another key ahead of the stream, before the sink
#     and before the enclave worker; and a sink holding another key.
# Each attack ends INCOMPLETE (exit 4) with its reason named; each has its
# control in the same harness: the honest relay gives every row, complete,
# exit 0. Batches under another key never stop a component.
. "$(dirname "$0")/lib.sh"
ROWS=3000
F=$(flights $ROWS)
head -1 "$F" >"$T/empty.csv"
"$SS" keygen -o "$T/key" >/dev/null 2>&1
export SS_STREAM=7003 SS_KEY_FILE="$T/key"
printf 'return function(stream)\n  return stream:map(function(line) return line end)\nend\n' >"$T/stage.lua"
SINK_SCRIPT="$ROOT/tests/fixtures/count-sink.lua"
new_run() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# The attacker: its own directory and key, nothing of ours.
chmod 711 "$T"
mkdir "$T/att"
chown 65534:65534 "$T/att"
AS_ATTACKER="setpriv --reuid=65534 --regid=65534 --clear-groups"
$AS_ATTACKER "$SS" keygen -o "$T/att/own.key" >/dev/null 2>&1
check "the attacker cannot read the data key" sh -c "! $AS_ATTACKER cat '$T/key' 2>/dev/null"

# hostile NAME MODE [VAR=VALUE...]: the attacker's router as h; its
# endpoints in H1F H1B (hop 1) and H2F H2B (hop 2, with FROM2 set)
hostile() {
    _hn=$1 _hm=$2
    shift 2
    rm -f "$T/h.ready"
    env MODE="$_hm" "$@" sh -c 'exec '"$AS_ATTACKER"' "$0" lua "$1" >&3' "$SS" \
        "$ROOT/tests/attack/router.lua" 3>"$T/h.ready" 2>>"$T/$_hn.attacker.log" &
    PIDS="$PIDS $!"
    wait_ready "$T/h.ready" || { notok "$_hn: the attacker starts" "$(tail -3 "$T/$_hn.attacker.log")"; return 1; }
    read -r _ H1F H1B H2F H2B <"$T/h.ready"
}

# worker NAME POS RUN FROM TO [KEY]: a worker whose stage runs in an enclave
worker() {
    start_ready "$1" env SS_ENCLAVE=isolated "$SS" worker --from "$4" --to "$5" --script "$T/stage.lua" \
        --name "$1" --stage "$1" --pos "$2" --run "$3" ${6:+--key "$6"} --ready-fd 3
}

# finish NAME RUN INPUT FRONT0 POS FROM [KEY]: the sink at position POS on
# FROM (ready first), then the source into FRONT0; the sink's exit status in
# RC, its output in $T/NAME.out, its summary in $T/NAME.err and NAME.json
finish() {
    rm -f "$T/sink.log"
    SS_SUMMARY_FILE="$T/$1.json" SS_POS=$5 start_ready sink timeout 60 "$SS" sink --from "$6" \
        --script "$SINK_SCRIPT" --run "$2" ${7:+--key "$7"} --ready-fd 3 >"$T/$1.out" || return 1
    _fs=$LAST
    "$SS" source --to "$4" --input "$3" --batch-bytes 8192 --run "$2" >/dev/null 2>"$T/$1.source.err" &
    PIDS="$PIDS $!"
    wait "$_fs"
    RC=$?
    cp "$T/sink.log" "$T/$1.err"
    stop_all
}

# one_stage NAME MODE RUN INPUT [VAR=VALUE...]: source -> router0 -> stage1
# (enclave) -> attacker -> sink
one_stage() {
    _on=$1 _om=$2 _or=$3 _oi=$4
    shift 4
    start_router r0 || return 1
    hostile "$_on" "$_om" "$@" || return 1
    worker stage1 1 "$_or" "$BACK_r0" "$H1F" || return 1
    finish "$_on" "$_or" "$_oi" "$FRONT_r0" 2 "$H1B"
}

complete_exact() { # NAME: exit 0, every row, complete
    check "$1: exit 0" test "$RC" -eq 0
    check "$1: every row, once" grep -qx "records $ROWS" "$T/$1.out"
    check "$1: complete" grep -q 'complete: all [0-9]* source batches accounted for' "$T/$1.err"
}
refused() { # NAME REASON: exit 4, INCOMPLETE naming REASON, no complete
    check "$1: exit 4" test "$RC" -eq 4
    check "$1: the verdict names it ($2)" grep -q "summary: .*INCOMPLETE: .*$2" "$T/$1.err"
    check "$1: not called complete" sh -c "! grep -q 'complete: all' '$T/$1.err'"
}

# ---- the control, and an earlier run kept by the attacker --------------------
mkdir "$T/att/cap" "$T/att/cap0"
chown 65534:65534 "$T/att/cap" "$T/att/cap0"
one_stage relay relay "$(new_run)" "$F" && complete_exact relay
one_stage capture capture "$(new_run)" "$F" CAPTURE="$T/att/cap" && complete_exact capture
check "capture: the attacker kept the batches" test -s "$T/att/cap/batch.1" -a -s "$T/att/cap/eos"
one_stage capture0 capture "$(new_run)" "$T/empty.csv" CAPTURE="$T/att/cap0"
check "capture0: an empty run completes" test "$RC" -eq 0
check "capture0: the attacker kept its end of stream" test -s "$T/att/cap0/eos"

# ---- a stage's statistics dropped: its skipped and rejected counts vanish -----
one_stage drop-stats drop-worker-stats "$(new_run)" "$F" &&
    refused drop-stats 'no authenticated statistics from stage position 1'
check "drop-stats: every row still arrived (only the counts were hidden)" \
    grep -qx "records $ROWS" "$T/drop-stats.out"

# ---- an earlier run's batches and statistics (same key) ----------------------
one_stage old-run old-run "$(new_run)" "$F" CAPTURE="$T/att/cap" &&
    refused old-run 'batches rejected (first: batch .*batch of another run'
check "old-run: the earlier run's statistics are refused" \
    grep -q 'ignored the statistics of .*of another run' "$T/old-run.err"
check "old-run: no row of the earlier run reaches the sink" grep -qx 'records 0' "$T/old-run.out"
# an earlier empty run's end of stream, this run's batches dropped
one_stage old-empty old-run "$(new_run)" "$F" CAPTURE="$T/att/cap0" &&
    refused old-empty 'no authenticated statistics from any source'
check "old-empty: the earlier source's record is refused as another run's" \
    grep -q 'made by a source of another run' "$T/old-empty.err"

# ---- a record an enclave made, labelled source, in place of the source's -----
RUN=$(new_run)
cat >"$T/record.lua" <<'EOF'
-- The worker's host: an enclave it starts with the label "source", at
-- position 0 of this run, reports no batch; its record is kept for the
-- router's host.
local net = require 'securestreams.net'
local Enclave = require 'securestreams.enclave'
local enc = Enclave.new({ backend = 'isolated', code = 'return function(s) return s end', name = '=x',
  key_file = os.getenv('SS_KEY_FILE'), stage = 'source', pos = 0, run = os.getenv('RUN'), producer = 7 })
local id = net.hex(net.new_id())
local f = assert(io.open(arg[1], 'wb'))
f:write(net.encode({ id = id, n = 3, sealed = enc:finish(id, 3) }))
f:close()
EOF
RUN=$RUN "$SS" lua "$T/record.lua" "$T/att/record" 2>"$T/record.err"
check "the worker's host made an enclave record labelled source" test -s "$T/att/record"
chown 65534:65534 "$T/att/record"
one_stage swap swap-source-record "$RUN" "$F" RECORD="$T/att/record" &&
    refused swap 'no authenticated statistics from any source'
check "swap: the enclave's record is named forged" \
    grep -q 'labelled source, but made by a worker at stage position 0' "$T/swap.err"

# ---- a stage skipped: stage 1's output straight to the sink ------------------
two_stages() { # NAME MODE
    _tr=$(new_run)
    start_router r0 || return 1
    hostile "$1" "$2" FROM2='tcp://127.0.0.1:*' TO2='tcp://127.0.0.1:*' || return 1
    worker stage2 2 "$_tr" "$H1B" "$H2F" || return 1
    worker stage1 1 "$_tr" "$BACK_r0" "$H1F" || return 1
    finish "$1" "$_tr" "$F" "$FRONT_r0" 3 "$H2B"
}
two_stages relay2 relay && complete_exact relay2
two_stages skip skip-stage && refused skip 'made at stage position 1, expected 2'

# ---- batches sealed with another key, first ----------------------------------
one_stage foreign foreign-key "$(new_run)" "$F" KEY="$T/att/own.key" POS=1 FOREIGN=12 &&
    complete_exact foreign
OWN=$(sed -n 's/^id //p' "$T/key")
THEIRS=$(sed -n 's/^id //p' "$T/att/own.key")
check "foreign: counted and named in the verdict" \
    grep -q "ignored 12 batches sealed with another key (key id $THEIRS; this sink has $OWN)" "$T/foreign.err"
check "foreign: in the summary's JSON" grep -q '"foreign":12' "$T/foreign.json"
check "foreign: the first ones logged with their key id" \
    grep -q "ignored batch 0 of producer [0-9a-f]*: sealed with another key (key id $THEIRS" "$T/foreign.err"
# ... and ahead of the enclave worker: the attacker stands in for router0
RUN=$(new_run)
hostile foreign-worker foreign-key KEY="$T/att/own.key" POS=0 FOREIGN=12
start_router r1
worker stage1 1 "$RUN" "$H1B" "$FRONT_r1"
finish foreign-worker "$RUN" "$F" "$H1F" 2 "$BACK_r1"
complete_exact foreign-worker
check "foreign-worker: the enclave counted them in its statistics" \
    grep -Eq '^  stage1 +1 +[0-9]+ +[0-9]+ +0 +0 +0 +12 ' "$T/foreign-worker.err"
check "foreign-worker: the worker logged them with their key id" \
    grep -q "sealed with another key (key id $THEIRS" "$T/stage1.log"

# ---- a sink holding another key: incomplete, named, no stop ------------------
RUN=$(new_run)
start_router r0
start_router r1
worker stage1 1 "$RUN" "$BACK_r0" "$FRONT_r1"
finish wrong-key "$RUN" "$F" "$FRONT_r0" 2 "$BACK_r1" "$T/att/own.key"
refused wrong-key "[0-9]* batches sealed with another key (key id $OWN; this sink has $THEIRS)"
check "wrong-key: the sink received the whole stream (no trip wire)" \
    sh -c "! grep -q 'wrong data key' '$T/wrong-key.err'"
check "wrong-key: the sink says it received nothing else" \
    grep -q "error: all [0-9]* batches received were sealed with another key" "$T/wrong-key.err"
