# Shared helpers of the integration tests: real processes on loopback.
# Each test prints "ok NAME" or "not ok NAME" lines; tests/run.sh counts them.
set -u
SS=${SS_BIN:?run through tests/run.sh}
ROOT=${SS_ROOT:?}
DATA="$SS_BUILD/testdata"
mkdir -p "$DATA"
T=$(mktemp -d)
PIDS=""
# Killed processes are noticed when their connection closes; the liveness
# timeout (default 10 s) only bounds how long a hung peer can stall a test.
export SS_LIVENESS_MS=${SS_LIVENESS_MS:-5000}

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    sleep 0.1
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT

ok() { echo "ok $1"; }
notok() { echo "not ok $1${2:+: $2}"; }

# check NAME CMD...: ok when CMD exits 0
check() {
    name=$1
    shift
    if "$@"; then ok "$name"; else notok "$name"; fi
}

# flights N: path of a generated file of N rows (seed 7), made once per build
flights() {
    f="$DATA/flights-$1.csv"
    if [ ! -s "$f" ]; then
        "$SS" gen flights --rows "$1" --seed 7 >"$f.tmp" && mv "$f.tmp" "$f"
    fi
    echo "$f"
}

# expected FILE: the awk reference answer, in the printer's format
expected() {
    r="$1.expected"
    if [ ! -s "$r" ]; then
        mawk -F, -f "$ROOT/tools/delays.awk" "$1" >"$r.tmp" && mv "$r.tmp" "$r"
    fi
    cat "$r"
}

# results FILE: the printer's output without its comment line
results() { grep -v '^#' "$1"; }

# same NAME EXPECTED_FILE ACTUAL_FILE
same() {
    if cmp -s "$2" "$3"; then ok "$1"; else notok "$1" "results differ"; diff "$2" "$3" | head -20; fi
}

# start_router NAME: starts a router on ephemeral loopback ports; sets
# FRONT_<NAME> and BACK_<NAME>
start_router() {
    rm -f "$T/$1.ready"   # never read a previous router's line
    "$SS" router --name "$1" --from 'tcp://127.0.0.1:*' --to 'tcp://127.0.0.1:*' \
        --ready-fd 3 3>"$T/$1.ready" 2>>"$T/$1.log" &
    PIDS="$PIDS $!"
    i=0
    while ! grep -q '^ready' "$T/$1.ready" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && { notok "router $1 starts"; cat "$T/$1.log"; return 1; }
        sleep 0.05
    done
    read -r _ front back <"$T/$1.ready"
    eval "FRONT_$1=\$front BACK_$1=\$back"
}

# bg CMD...: run in the background, remember the pid in LAST
bg() {
    "$@" &
    LAST=$!
    PIDS="$PIDS $LAST"
}
