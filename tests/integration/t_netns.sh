# The multi-host path without Docker: routers, workers, the source and the
# sink on six test hosts of their own, network namespaces with their own
# addresses on a private bridge that lives in a seventh namespace (nothing is
# added to the machine's own network). The delayed-flights pipeline across
# them equals awk, plain and then encrypted with CurveZMQ while one worker
# host is cut off the network mid-stream. Everything is removed at the end,
# also on failure. Needs root (CAP_SYS_ADMIN) for `ip netns`.
. "$(dirname "$0")/lib.sh"
NS=ssn$$
NET=10.77.0
HOSTS="r1 r2 w1 w2 src snk"
MADE=""
nscleanup() {
    stop_all
    for n in $MADE; do ip netns del "$n" 2>/dev/null; done
    cleanup
}
trap nscleanup EXIT
trap 'exit 1' INT TERM HUP

if ! command -v ip >/dev/null 2>&1; then
    notok "ip (iproute2) is installed" "the multi-host test needs ip netns"
    exit 1
fi
if ! ip netns add "${NS}sw" 2>"$T/err"; then
    notok "network namespaces can be made" "ip netns add: $(cat "$T/err") (needs root or CAP_SYS_ADMIN and a kernel with network namespaces)"
    exit 1
fi
MADE="${NS}sw"
ok "network namespaces can be made"

# The switch: a bridge in its own namespace; one veth from it to each host.
addr_of() {
    case $1 in r1) echo "$NET.11" ;; r2) echo "$NET.12" ;; w1) echo "$NET.21" ;; w2) echo "$NET.22" ;;
        src) echo "$NET.31" ;; snk) echo "$NET.41" ;; esac
}
setup() {
    ip -n "${NS}sw" link add br0 type bridge || return 1
    ip -n "${NS}sw" link set br0 up || return 1
    k=0
    for h in $HOSTS; do
        k=$((k + 1))
        ip netns add "$NS$h" || return 1
        MADE="$MADE $NS$h"
        ip link add "v$k" netns "${NS}sw" type veth peer name eth0 netns "$NS$h" || return 1
        ip -n "${NS}sw" link set "v$k" master br0 up || return 1
        ip -n "$NS$h" addr add "$(addr_of "$h")/24" dev eth0 || return 1
        ip -n "$NS$h" link set eth0 up || return 1
        ip -n "$NS$h" link set lo up || return 1
    done
}
if setup 2>"$T/err"; then
    ok "six test hosts on a private bridge"
else
    notok "six test hosts on a private bridge" "$(cat "$T/err")"
    exit 1
fi
# Each host reaches the others (the bridge may take a moment to forward).
reach() { ip netns exec "${NS}w2" ping -c1 -W1 "$(addr_of r2)" >/dev/null 2>&1; }
if command -v ping >/dev/null 2>&1; then
    check "w2 reaches r2 across the bridge" poll_until 5 reach
fi
check "no test host has a route off the bridge" sh -c \
    "! ip -n '${NS}w1' route | grep -q default && ! ip -n '${NS}snk' route | grep -q default"

# on HOST CMD...: run CMD in HOST's namespace in the background; pid in LAST
on() {
    h=$1
    shift
    ip netns exec "$NS$h" "$@" &
    LAST=$!
    PIDS="$PIDS $LAST"
}
# pipeline RUN SPECDIR STAGE... : routers on r1 and r2, workers of every
# stage on w1 and w2, the source on src, the sink on snk; the sink's
# output in $T/RUN.out, its pid in SINK, the w2 workers' pids in W2PIDS.
pipeline() {
    run=$1 dir=$2
    shift 2
    stages="$*"
    n=0
    for s in $stages; do n=$((n + 1)); done
    i=0
    while [ $i -le "$n" ]; do
        host=r1
        [ $i -ge 2 ] && host=r2
        port=$((5555 + 2 * i))
        on $host "$SS" router --name "router$i" --from "tcp://$(addr_of $host):$port" \
            --to "tcp://$(addr_of $host):$((port + 1))" --ready-fd 3 3>"$T/$run.router$i.ready" \
            2>>"$T/$run.log"
        wait_ready "$T/$run.router$i.ready" || { notok "$run: router$i starts"; return 1; }
        eval "FRONT$i=tcp://$(addr_of $host):$port BACK$i=tcp://$(addr_of $host):$((port + 1))"
        i=$((i + 1))
    done
    eval "on snk '$SS' sink --from \$BACK$n --script '$dir/printer.lua' --name sink --stage sink --ready-fd 3 \
        3>'$T/$run.sink.ready' >'$T/$run.out' 2>>'$T/$run.sink.err'"
    SINK=$LAST
    W2PIDS=""
    i=0
    for s in $stages; do
        for w in w1 w2; do
            eval "on $w '$SS' worker --from \$BACK$i --to \$FRONT$((i + 1)) --script '$dir/$s.lua' \
                --name '$s@$w' --stage '$s' --pos $((i + 1)) --ready-fd 3 3>'$T/$run.$s.$w.ready' 2>>'$T/$run.log'"
            [ $w = w2 ] && W2PIDS="$W2PIDS $LAST"
        done
        i=$((i + 1))
    done
    for f in "$T/$run".*.ready; do
        wait_ready "$f" || { notok "$run: $(basename "$f" .ready) joins"; cat "$T/$run.log" | tail -5; return 1; }
    done
    on src "$SS" source --to "$FRONT0" --input "$F" --header 2>>"$T/$run.log"
    return 0
}
# finish RUN: wait for the sink (at most 90 s); ok when it exited 0
finish() {
    poll_until 90 gone "$SINK" || { notok "$1: the sink finishes within 90 s"; return 1; }
    wait "$SINK"
}

F=$(flights 200000)
expected "$F" >"$T/expected"

# 1. Plain, two workers per stage on two hosts.
export SS_STREAM=7001
if pipeline plain "$ROOT/examples/flights" mapper filter reducer; then
    if finish plain; then
        ok "plain across hosts: the sink exits 0"
        results "$T/plain.out" >"$T/plain.results"
        same "plain across hosts equals awk" "$T/expected" "$T/plain.results"
        check "plain across hosts: complete" grep -q 'complete: all' "$T/plain.sink.err"
        check "plain across hosts: router0 saw workers from w1 and w2" sh -c \
            "grep -q 'consumer mapper@w1' '$T/plain.log' && grep -q 'consumer mapper@w2' '$T/plain.log'"
    else
        notok "plain across hosts: the sink exits 0" "$(tail -5 "$T/plain.sink.err")"
    fi
fi
stop_all

# 2. Encrypted, CurveZMQ on every link, a first stage that lasts (about 10 s
#    of CPU), and host w2 cut off the network once the stream runs: its
#    workers fall silent, the routers declare them dead after the liveness
#    timeout and hand their batches to w1's. The result stays exact.
P="$T/pipe"
mkdir -p "$T/keys"
pipeline_dir "$P"
"$SS" keygen -o "$T/keys/data.key" >/dev/null 2>&1
"$SS" keygen --curve -o "$T/keys/router" >/dev/null 2>&1
"$SS" keygen --curve -o "$T/keys/client" >/dev/null 2>&1
# A cut is noticed after the liveness timeout, 8 s here: long enough that a
# busy machine does not pass for a cut, short enough for a test.
export SS_STREAM=7002 SS_KEY_FILE="$T/keys/data.key" SS_LIVENESS_MS=8000
SS_RUN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')   # wired by hand: every component told
export SS_RUN
export SS_CURVE_ROUTER_KEY="$T/keys/router" SS_CURVE_ALLOW="$T/keys/client.pub"
export SS_CURVE_KEY="$T/keys/client" SS_CURVE_SERVER="$T/keys/router.pub"
if pipeline cut "$P" pace mapper filter reducer; then
    wait_for 10 grep -q 'producer source (id .*) joined' "$T/cut.log"
    # cut mid-stream: once w2's first worker has done some of its work
    set -- $W2PIDS
    wait_for 30 busy "$1" 300
    check "cut: the stream is still running when w2 is cut off" sh -c "kill -0 $SINK && ! grep -q 'router0.*end of stream' '$T/cut.log'"
    ip -n "${NS}w2" link set eth0 down
    if finish cut; then
        ok "cut: the sink exits 0"
    else
        notok "cut: the sink exits 0" "$(tail -5 "$T/cut.sink.err")"
        tail -40 "$T/cut.log"
    fi
    results "$T/cut.out" >"$T/cut.results"
    same "cut: encrypted across hosts, one host cut off, equals awk" "$T/expected" "$T/cut.results"
    check "cut: complete" grep -q 'complete: all' "$T/cut.sink.err"
    check "cut: the routers declared w2's workers dead" grep -q '@w2.*silent for' "$T/cut.log"
    check "cut: batches went to the other host" grep -Eq 'redelivered [1-9]|unacknowledged batches go back' "$T/cut.log"
    check "cut: routers used CurveZMQ" grep -q 'CurveZMQ: server public key' "$T/cut.log"
fi
stop_all
unset SS_KEY_FILE SS_RUN SS_CURVE_ROUTER_KEY SS_CURVE_ALLOW SS_CURVE_KEY SS_CURVE_SERVER

# 3. SS_JOIN_TIMEOUT_MS: a component whose router never comes gives up then.
t0=$(date +%s)
SS_JOIN_TIMEOUT_MS=700 ip netns exec "${NS}snk" "$SS" sink --from "tcp://$(addr_of r2):5599" \
    --script "$ROOT/examples/flights/printer.lua" >/dev/null 2>"$T/join.err"
rc=$?
check "SS_JOIN_TIMEOUT_MS=700: a sink with no router fails" test "$rc" -ne 0
check "SS_JOIN_TIMEOUT_MS=700: within 5 s" test $(($(date +%s) - t0)) -le 5
check "SS_JOIN_TIMEOUT_MS=700: the message says 0.7 s" grep -q 'within 0.7 s' "$T/join.err"

nscleanup
trap - EXIT
check "cleanup: every namespace of this test is gone" sh -c "! ip netns list | grep -q '^$NS'"
