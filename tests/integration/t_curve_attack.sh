# Identities and roles under CurveZMQ (docs/curve.md, "Identities", "Roles"),
# from an attacker's side: tests/attack/impostor.c is a real DEALER with its
# own allow-listed key, run as nobody (uid 65534). It claims the routing id of
# the live sink and worker, the 9-byte id a plain link uses (what took the
# sink's identity before identities were bound to keys) and the member's key
# with a guessed random part; it receives nothing, what it sends is dropped,
# the run is exact and complete, and the routers name it and count it.
# CONTROL: the same program with its own identity joins and receives every
# batch, and a second instance with the same key and the same full routing id
# takes the connection over (as ROUTER_HANDOVER should). Roles: a sink-only
# key joining as a producer, a worker key publishing its own lineage and a
# source key publishing another's are refused and named; each next to the
# same key doing what its role allows.
# tier: fast
. "$(dirname "$0")/lib.sh"
IMPOSTOR="$SS_BUILD/attack/impostor"
if [ ! -x "$IMPOSTOR" ]; then
    notok "impostor built" "$IMPOSTOR missing (make $IMPOSTOR)"
    exit 0
fi

# The attacker's files are its own: a directory nobody can read, in a $T
# nobody can list.
chmod 711 "$T"
mkdir -p "$T/att" "$T/allow/source" "$T/allow/worker" "$T/allow/sink"
for k in router source worker sink; do
    "$SS" keygen --curve -o "$T/$k" >/dev/null || notok "keygen --curve $k"
done
for k in att1 att2 att3 att4 rsink rworker rsource; do
    "$SS" keygen --curve -o "$T/att/$k" >/dev/null || notok "keygen --curve $k"
done
cp "$T/router.pub" "$T/sink.pub" "$T/worker.pub" "$T/att/"
cp "$T/source.pub" "$T/att/rsource.pub" "$T/allow/source/"
cp "$T/worker.pub" "$T/att/rworker.pub" "$T/allow/worker/"
cp "$T/sink.pub" "$T/att/rsink.pub" "$T/allow/sink/"
cp "$T"/att/att*.pub "$T/allow/"          # the attackers may do anything a member may
pub() { sed -n 's/^public //p' "$1"; }
ATT1=$(pub "$T/att/att1.pub") ATT2=$(pub "$T/att/att2.pub") ATT3=$(pub "$T/att/att3.pub")
ATT4=$(pub "$T/att/att4.pub")
if [ "$(id -u)" = 0 ]; then
    chown -R 65534:65534 "$T/att"
    chmod 700 "$T/att"
    AS_NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
else
    AS_NOBODY=""
fi
# attacker NAME KEY ARGS...: the impostor in the background as nobody,
# stdout in $T/NAME.out
attacker() {
    _at=$1 _at_key=$2
    shift 2
    # shellcheck disable=SC2086 # the setpriv words
    bg $AS_NOBODY "$IMPOSTOR" --server "$T/att/router.pub" --key "$T/att/$_at_key" "$@" \
        >"$T/$_at.out" 2>"$T/$_at.err"
}
joined_id() { sed -n "s/.*$2 $3 (id \([0-9a-f]*\)) joined.*/\1/p" "$T/$1.log" | head -1; }

# ---- the pipeline under attack: source -> a -> worker -> b -> sink ----------
ROWS=$(rows 60000 20000)
F=$(flights "$ROWS")
printf 'return function(stream) return stream end\n' >"$T/pass.lua"
start_router a --curve-key "$T/router" --curve-allow "$T/allow" || exit 1
CZ_A=$LAST
start_router b --curve-key "$T/router" --curve-allow "$T/allow" || exit 1
CZ_B=$LAST
SS_CURVE_KEY="$T/sink" SS_CURVE_SERVER="$T/router.pub" \
    bg "$SS" sink --name sink --from "$BACK_b" --script "$ROOT/tests/fixtures/count-sink.lua" \
    >"$T/sink.out" 2>"$T/sink.err"
SINK=$LAST
SS_CURVE_KEY="$T/worker" SS_CURVE_SERVER="$T/router.pub" \
    bg "$SS" worker --name worker --from "$BACK_a" --to "$FRONT_b" --script "$T/pass.lua" \
    2>"$T/worker.err"
wait_for 10 grep -q "consumer sink (id" "$T/b.log" || exit 1
wait_for 10 grep -q "consumer worker (id" "$T/a.log" || exit 1
SINK_ID=$(joined_id b consumer sink)
WORKER_ID=$(joined_id a consumer worker)

# Each attack under a key of its own, so that each is named in the log.
attacker sink9 att1 --connect "$BACK_b" --peer "$SINK_ID" --rid-key none --join consumer \
    --ack --seconds 60
attacker sinkkey att2 --connect "$BACK_b" --peer "$SINK_ID" --rid-key "$T/att/sink.pub" \
    --join consumer --ack --seconds 60
attacker workerkey att3 --connect "$BACK_a" --peer "$WORKER_ID" --rid-key "$T/att/worker.pub" \
    --join consumer --ack --seconds 60
attacker workerpub att4 --connect "$FRONT_b" --peer "$WORKER_ID" --rid-key none \
    --join producer --publish 3 --lineage 1234 --seconds 60
ATTACKERS="$(echo "$PIDS" | awk '{ print $(NF-3), $(NF-2), $(NF-1), $NF }')"
for k in "$ATT1" "$ATT2" "$ATT4"; do wait_for 10 grep -qF "public key $k at" "$T/b.log"; done
wait_for 10 grep -qF "public key $ATT3 at" "$T/a.log"

if SS_CURVE_KEY="$T/source" SS_CURVE_SERVER="$T/router.pub" \
    timeout 60 "$SS" source --name source --to "$FRONT_a" --input "$F" 2>"$T/source.err"; then
    ok "under attack: the source sends the file"
else
    notok "under attack: the source sends the file" "exit status $?"
    tail -5 "$T/source.err"
fi
poll_until 30 gone "$SINK"
wait "$SINK"
check "under attack: the sink exits 0 (complete)" test $? -eq 0
check "under attack: the sink has every record, exactly" grep -q "^records $ROWS\$" "$T/sink.out"
# shellcheck disable=SC2086 # a list of pids
stop $ATTACKERS
for a in sink9 sinkkey workerkey workerpub; do
    check "impostor $a ran and ended" grep -q '^summary ' "$T/$a.out"
    check "impostor $a was never welcomed and received nothing" \
        grep -q '^summary welcomed 0 delivered 0 receipts 0 ' "$T/$a.out"
done
check "router names the impostor on the sink's 9-byte routing id" grep -qF \
    "from the CurveZMQ client with public key $ATT1 at 127.0.0.1: it claims the routing id of peer $SINK_ID without its key" "$T/b.log"
check "router names the impostor with the sink's key in its routing id" grep -qF \
    "public key $ATT2 at 127.0.0.1: it claims the routing id of peer $SINK_ID of key $(pub "$T/sink.pub")" "$T/b.log"
check "router names the impostor with the worker's key in its routing id" grep -qF \
    "public key $ATT3 at 127.0.0.1: it claims the routing id of peer $WORKER_ID of key $(pub "$T/worker.pub")" "$T/a.log"
check "router names the impostor publishing as the worker" grep -qF \
    "public key $ATT4 at 127.0.0.1: it claims the routing id of peer $WORKER_ID without its key" "$T/b.log"
poll_until 10 gone "$CZ_A" "$CZ_B"
n=$(sed -n 's/.*impostors \([0-9]*\).*/\1/p' "$T/b.log")
check "router counts the impostors' messages in its exit line" test "${n:-0}" -ge 3
for r in a b; do
    check "router $r refused and redelivered no batch" grep -q 'redelivered 0, refused 0' "$T/$r.log"
done
grep -q "^records $ROWS\$" "$T/sink.out" || { tail -n 5 "$T/sink.err" "$T/b.log"; }

# ---- CONTROL: the same program with its own identity, then a takeover ------
# x1 joins as a consumer with its own key's identity; x2, the same key and
# the same full routing id, connects and takes the connection over; x2
# receives every batch and the end of stream.
start_router c --curve-key "$T/router" --curve-allow "$T/allow" || exit 1
attacker x1 att1 --connect "$BACK_c" --peer 1111 --nonce "save:$T/att/nonce" --join consumer \
    --ack --no-reconnect --seconds 60
X1=$LAST
wait_for 10 grep -q '^welcome' "$T/x1.out"
attacker x2 att1 --connect "$BACK_c" --peer 1111 --nonce "load:$T/att/nonce" --join consumer \
    --ack --seconds 60
X2=$LAST
wait_for 10 grep -q "joined again: the earlier membership ends" "$T/c.log"
wait_for 10 grep -q '^welcome' "$T/x2.out"
SS_CURVE_KEY="$T/source" SS_CURVE_SERVER="$T/router.pub" \
    timeout 60 "$SS" source --to "$FRONT_c" --input "$F" 2>"$T/source-c.err"
poll_until 30 gone "$X2"
nb=$(grep -c '^deliver .* data$' "$T/x2.out")
check "control: its own identity, joined, receives every batch and the end" \
    sh -c "grep -q '^deliver .* eos\$' '$T/x2.out' && test $nb -ge 1"
check "control: the same key and routing id took the connection over" \
    sh -c "! grep -q '^deliver' '$T/x1.out'"
stop "$X1"
check "control: the router saw no impostor" sh -c "! grep -q impostor: '$T/c.log'"

# ---- roles -------------------------------------------------------------------
start_router r --curve-key "$T/router" --curve-allow "$T/allow" || exit 1
RSINK=$(pub "$T/att/rsink.pub") RWORKER=$(pub "$T/att/rworker.pub")
RSOURCE=$(pub "$T/att/rsource.pub")
attacker sinkprod rsink --connect "$FRONT_r" --join producer --publish 1 --seconds 60
SP=$LAST
wait_for 10 grep -qF "refused a JOIN as producer on the frontend from the CurveZMQ client with public key $RSINK" "$T/r.log"
stop "$SP"
check "a sink key joining as a producer is refused and named with its role" \
    grep -qF "public key $RSINK at 127.0.0.1 (peer " "$T/r.log"
check "a sink key joining as a producer is never welcomed" grep -q '^summary welcomed 0 ' "$T/sinkprod.out"
attacker sinkcons rsink --connect "$BACK_r" --join consumer --seconds 60
SC=$LAST
wait_for 10 grep -q '^welcome' "$T/sinkcons.out" && ok "control: the sink key joins as a consumer"
stop "$SC"

attacker workerself rworker --connect "$FRONT_r" --peer 2222 --join producer --publish 1 \
    --receipts 1 --seconds 20
attacker workerother rworker --connect "$FRONT_r" --peer 2223 --join producer --publish 1 \
    --lineage 77 --receipts 1 --seconds 20
attacker sourceother rsource --connect "$FRONT_r" --peer 3333 --join producer --publish 1 \
    --lineage 77 --receipts 1 --seconds 20
attacker sourceself rsource --connect "$FRONT_r" --peer 3334 --join producer --publish 1 \
    --receipts 1 --seconds 20
for a in workerself workerother sourceother sourceself; do
    wait_for 20 grep -q '^summary' "$T/$a.out"
done
check "a worker key publishing a lineage naming itself is refused" grep -q '^receipt 0 refused' "$T/workerself.out"
check "control: a worker key publishing another's lineage is stored" grep -q '^receipt 0 ok' "$T/workerother.out"
check "a source key publishing another's lineage is refused" grep -q '^receipt 0 refused' "$T/sourceother.out"
check "control: a source key publishing its own batch is stored" grep -q '^receipt 0 ok' "$T/sourceself.out"
check "router names the worker key and its role" grep -qF \
    "refused batch 0 from producer 0000000000002222: its key $RWORKER has the roles worker, which may not publish a batch whose lineage names itself" "$T/r.log"
check "router names the source key and its role" grep -qF \
    "its key $RSOURCE has the roles source, which may not publish a batch whose lineage does not name itself" "$T/r.log"

# A JOIN naming a peer id other than its routing id's, and one naming the
# peer id another key joined with: dropped and named (the first JOINs above,
# each key with its own ids, were the control).
attacker joinid att2 --connect "$FRONT_r" --peer 4444 --join-id 2223 --join producer --seconds 60
JI=$LAST
attacker takeid att3 --connect "$FRONT_r" --peer 2223 --join producer --seconds 60
TI=$LAST
wait_for 10 grep -qF "public key $ATT2 at 127.0.0.1: it names peer id 0000000000002223, its routing id 0000000000004444" "$T/r.log"
wait_for 10 grep -qF "public key $ATT3 at 127.0.0.1: peer id 0000000000002223 joined with key $RWORKER" "$T/r.log"
stop "$JI" "$TI"
check "a JOIN naming another peer id than its routing id's is never welcomed" grep -q '^summary welcomed 0 ' "$T/joinid.out"
check "a JOIN with another key's peer id is never welcomed" grep -q '^summary welcomed 0 ' "$T/takeid.out"
