# CurveZMQ on the links (docs/curve.md): a router with --curve-key and
# --curve-allow, a source and a sink with SS_CURVE_KEY / SS_CURVE_SERVER move
# a file end to end; a client with an unknown key and one without CurveZMQ
# are refused at once, and the router logs and counts the refusals. The same
# environment gives `run` a CurveZMQ pipeline.
# tier: fast
. "$(dirname "$0")/lib.sh"
if ! "$SS" keygen --help 2>&1 | grep -q -- '--curve'; then
    notok "keygen command missing" "securestreams keygen --curve is not available"
    exit 0
fi

# Keys: the router's, two allowed clients, a stranger. Z85 keys hold regex
# characters: grep them with -F.
mkdir -p "$T/allow"
for k in router source sink stranger; do
    "$SS" keygen --curve -o "$T/$k" >/dev/null || notok "keygen --curve $k"
done
cp "$T/source.pub" "$T/sink.pub" "$T/allow/"
check "keygen --curve: secret file 0600" test "$(stat -c %a "$T/router")" = 600
check "keygen --curve: public file 0644" test "$(stat -c %a "$T/router.pub")" = 644
check "keygen --curve refuses to overwrite" sh -c "! '$SS' keygen --curve -o '$T/router' 2>/dev/null"
STRANGER_PUB=$(sed -n 's/^public //p' "$T/stranger.pub")

F=$(flights 2000)
start_router cz --curve-key "$T/router" --curve-allow "$T/allow" || exit 1
ROUTER=$LAST
check "router logs CurveZMQ and its allow-list" grep -q "CurveZMQ: server public key .*2 client keys allowed ($T/allow)" "$T/cz.log"

SS_CURVE_KEY="$T/sink" SS_CURVE_SERVER="$T/router.pub" \
    bg "$SS" sink --from "$BACK_cz" --script "$ROOT/tests/fixtures/count-sink.lua" >"$T/sink.out" 2>"$T/sink.err"
SINK=$LAST

# Refused while the allowed sink waits: an unknown key, then no CurveZMQ.
t0=$(date +%s)
SS_CURVE_KEY="$T/stranger" SS_CURVE_SERVER="$T/router.pub" \
    timeout 20 "$SS" source --to "$FRONT_cz" --input "$F" 2>"$T/stranger.err"
rc=$?
check "unknown key: the source fails" test "$rc" -ne 0 -a "$rc" -ne 124
check "unknown key: refused without waiting for the join timeout" test $(($(date +%s) - t0)) -lt 8
check "unknown key: the client says the router refused its key" \
    grep -qF "the router at $FRONT_cz refused this client's CurveZMQ key (public key $STRANGER_PUB" "$T/stranger.err"
grep -qF "refused this client's CurveZMQ key" "$T/stranger.err" || cat "$T/stranger.err"
timeout 20 "$SS" source --to "$FRONT_cz" --input "$F" 2>"$T/plain.err"
rc=$?
check "no CurveZMQ: the source fails" test "$rc" -ne 0 -a "$rc" -ne 124
check "no CurveZMQ: the client is told to set SS_CURVE_KEY" grep -q "requires CurveZMQ: set SS_CURVE_KEY" "$T/plain.err"
SS_CURVE_KEY="$T/source" timeout 20 "$SS" source --to "$FRONT_cz" --input "$F" 2>"$T/half.err"
check "only SS_CURVE_KEY: the error names SS_CURVE_SERVER" grep -q "but not the router's public key file (SS_CURVE_SERVER)" "$T/half.err"

# The allowed source moves the file to the allowed sink.
if SS_CURVE_KEY="$T/source" SS_CURVE_SERVER="$T/router.pub" \
    timeout 60 "$SS" source --to "$FRONT_cz" --input "$F" 2>"$T/source.err"; then
    ok "allowed source sends the file"
else
    notok "allowed source sends the file" "exit status $?"
    tail -5 "$T/source.err"
fi
poll_until 30 gone "$SINK"
check "allowed sink receives every record" grep -q '^records 2000$' "$T/sink.out"
poll_until 10 gone "$ROUTER"
check "router logs the unknown key" \
    grep -qF "refused a CURVE client from 127.0.0.1 with public key $STRANGER_PUB: not in the allow-list ($T/allow)" "$T/cz.log"
# (It says "it does not use CurveZMQ", or, when the client hung up first,
# that the handshake did not complete.)
check "router logs the client without CurveZMQ" grep -q "refused a client on the frontend (" "$T/cz.log"
n=$(sed -n 's/.*CurveZMQ handshakes refused \([0-9]*\).*/\1/p' "$T/cz.log")
check "router counts the refusals in its exit line" test "${n:-0}" -ge 2
if [ "${n:-0}" -lt 2 ]; then cat "$T/cz.log"; fi

# Configuration errors.
"$SS" router --from 'tcp://127.0.0.1:*' --to 'tcp://127.0.0.1:*' --curve-key "$T/router" 2>"$T/usage.err"
check "router: --curve-key alone is a usage error" test $? -eq 2
check "router: the usage error names --curve-allow" grep -q -- "--curve-allow" "$T/usage.err"
cp "$T/router" "$T/loose"
chmod 644 "$T/loose"
"$SS" router --from 'tcp://127.0.0.1:*' --to 'tcp://127.0.0.1:*' --curve-key "$T/loose" \
    --curve-allow "$T/allow" 2>"$T/loose.err"
check "router: a secret key others can read is refused" grep -qF "$T/loose: readable or writable by others (mode 0644); chmod 600 it" "$T/loose.err"
SS_CURVE_ROUTER_KEY="$T/router" SS_CURVE_ALLOW="$T/empty-list" \
    "$SS" router --from 'tcp://127.0.0.1:*' --to 'tcp://127.0.0.1:*' 2>"$T/env.err"
check "router: SS_CURVE_ALLOW is read (and a missing list named)" grep -q "$T/empty-list" "$T/env.err"

# `run`: every router and component takes its keys from the environment.
expected "$F" >"$T/expected"
cp "$T/source" "$T/client"
if SS_CURVE_ROUTER_KEY="$T/router" SS_CURVE_ALLOW="$T/source.pub" \
    SS_CURVE_KEY="$T/client" SS_CURVE_SERVER="$T/router.pub" \
    run_same "run over CurveZMQ equals awk" "$ROOT/examples/flights/flights.spec.lua" \
    --input "$F" --workers 2; then
    check "run over CurveZMQ: every router was a CurveZMQ server" \
        test "$(grep -c 'CurveZMQ: server public key' "$T/err")" -ge 3
fi
"$SS" keygen -o "$T/data.key" >/dev/null
SS_CURVE_ROUTER_KEY="$T/router" SS_CURVE_ALLOW="$T/source.pub" \
    SS_CURVE_KEY="$T/client" SS_CURVE_SERVER="$T/router.pub" \
    run_same "run --security encrypted over CurveZMQ equals awk" \
    "$ROOT/examples/flights/flights.spec.lua" --input "$F" --workers 2 \
    --security encrypted --key "$T/data.key"
SS_CURVE_ROUTER_KEY="$T/router" SS_CURVE_ALLOW="$T/sink.pub" \
    SS_CURVE_KEY="$T/client" SS_CURVE_SERVER="$T/router.pub" \
    timeout 120 "$SS" run "$ROOT/examples/flights/flights.spec.lua" --input "$F" --workers 1 \
    >"$T/run2.out" 2>"$T/run2.err"
rc=$?
check "run with a key the routers do not allow fails" test "$rc" -ne 0 -a "$rc" -ne 124
check "run with a key the routers do not allow says why" grep -q "refused this client's CurveZMQ key" "$T/run2.err"
check "router and sink have exited" sh -c "! kill -0 $ROUTER 2>/dev/null && ! kill -0 $SINK 2>/dev/null"
