# Shared helpers of the integration tests: real processes on loopback.
# Each test prints "ok NAME" or "not ok NAME" lines; tests/run.sh counts them.
# A test waits for a state with wait_for or poll_until (a condition polled
# with a deadline), never with a fixed sleep; a sleep is left only where the
# delay itself is under test, with a comment saying so. sh has no local
# variables: helpers name theirs with a prefix of their own.
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

ok() { echo "ok $1"; }
notok() { echo "not ok $1${2:+: $2}"; }

# check NAME CMD...: ok when CMD exits 0
check() {
    _ck=$1
    shift
    if "$@"; then ok "$_ck"; else notok "$_ck"; fi
}

# rows FULL FAST: FULL, or FAST when tests/run.sh runs the fast tier
# (SS_TIER=fast), for tests that are as broad at a smaller size.
rows() { if [ "${SS_TIER:-full}" = fast ]; then echo "$2"; else echo "$1"; fi; }

# ---- waiting ---------------------------------------------------------------

now_ms() { date +%s%3N; }

# poll_until SECONDS CMD...: run CMD every WAIT_EVERY seconds (default 0.05)
# until it succeeds (0), or until SECONDS (a whole number) have passed (1).
# Prints nothing: for conditions that a check reports on.
poll_until() {
    _pu_end=$(($(now_ms) + $1 * 1000))
    shift
    while ! "$@"; do
        [ "$(now_ms)" -ge "$_pu_end" ] && return 1
        sleep "${WAIT_EVERY:-0.05}"
    done
}

# wait_for SECONDS CMD...: poll_until, and when the deadline passes the test
# fails with "not ok waited SECONDS s for: CMD".
wait_for() {
    poll_until "$@" && return 0
    _wf_s=$1
    shift
    notok "waited $_wf_s s for: $*"
    return 1
}

# gone PID...: every PID has exited (reaped, or a zombie of whoever has it)
gone() {
    for _g in "$@"; do
        kill -0 "$_g" 2>/dev/null || continue
        grep -q '^State:[[:space:]]*Z' "/proc/$_g/status" 2>/dev/null || return 1
    done
}

# session_empty SID: no process is left in session SID
session_empty() { ! pgrep -s "$1" >/dev/null; }

# busy PID MS: PID has used at least MS ms of CPU (it is doing the work)
busy() {
    _b=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null |
        awk -v hz="$(getconf CLK_TCK)" '{ print int(($12 + $13) * 1000 / hz) }')
    [ -n "$_b" ] && [ "$_b" -ge "$2" ]
}

# ---- starting and stopping -------------------------------------------------

# bg CMD...: run in the background, remember the pid in LAST
bg() {
    "$@" &
    LAST=$!
    PIDS="$PIDS $LAST"
}

# stop PID...: SIGTERM, up to 2 s to exit, then SIGKILL; children reaped
stop() {
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null
    poll_until 2 gone "$@"
    kill -9 "$@" 2>/dev/null
    wait "$@" 2>/dev/null
    return 0
}

# stop_all: stop every process started with bg (or added to PIDS)
stop_all() {
    # shellcheck disable=SC2086 # a list of pids
    stop $PIDS
    PIDS=""
}

cleanup() {
    stop_all
    rm -rf "$T"
}
trap cleanup EXIT

# wait_ready FILE [SECONDS]: until FILE has a line "ready ..." (10 s)
wait_ready() { poll_until "${2:-10}" grep -qs '^ready' "$1"; }

# start_ready NAME CMD...: start CMD in the background with its fd 3 on
# $T/NAME.ready and its stderr appended to $T/NAME.log; once it wrote
# "ready FRONT BACK" there, sets FRONT_<NAME> and BACK_<NAME> (and LAST).
start_ready() {
    _sr=$1
    shift
    rm -f "$T/$_sr.ready"   # never read a previous process's line
    "$@" 3>"$T/$_sr.ready" 2>>"$T/$_sr.log" &
    LAST=$!
    PIDS="$PIDS $LAST"
    if ! wait_ready "$T/$_sr.ready"; then
        notok "$_sr starts" "no ready line within 10 s"
        tail -20 "$T/$_sr.log"
        return 1
    fi
    read -r _ _sr_front _sr_back <"$T/$_sr.ready"
    eval "FRONT_$_sr=\$_sr_front BACK_$_sr=\$_sr_back"
}

# start_router NAME [ARGS...]: a router on ephemeral loopback ports (start_ready)
start_router() {
    _rt=$1
    shift
    start_ready "$_rt" "$SS" router --name "$_rt" --from 'tcp://127.0.0.1:*' \
        --to 'tcp://127.0.0.1:*' --ready-fd 3 "$@"
}

# hand_wired NAME DIR M F R: the seed's shape wired by hand with routers data,
# map, filt and red between M mappers, F filters and R reducers from DIR
# (mapper.lua, filter.lua, reducer.lua), the seed's data-stream.lua reading
# $F and its printer.lua; same NAME when the printer's results equal
# $T/expected.
hand_wired() {
    _hw=$1 _hw_dir=$2
    _hw_seed="$ROOT/examples/flights/seed"
    for _hw_r in data map filt red; do start_router $_hw_r || return 1; done
    _hw_i=0
    while [ $_hw_i -lt "$3" ]; do
        _hw_i=$((_hw_i + 1))
        FROM=$BACK_data TO=$FRONT_map SS_NAME=mapper#$_hw_i bg "$SS" lua "$_hw_dir/mapper.lua"
    done
    _hw_i=0
    while [ $_hw_i -lt "$4" ]; do
        _hw_i=$((_hw_i + 1))
        FROM=$BACK_map TO=$FRONT_filt SS_NAME=filter#$_hw_i bg "$SS" lua "$_hw_dir/filter.lua"
    done
    _hw_i=0
    while [ $_hw_i -lt "$5" ]; do
        _hw_i=$((_hw_i + 1))
        FROM=$BACK_filt TO=$FRONT_red SS_NAME=reducer#$_hw_i bg "$SS" lua "$_hw_dir/reducer.lua"
    done
    DATA_FILE=$F TO=$FRONT_data SS_NAME=source bg "$SS" lua "$_hw_seed/data-stream.lua"
    if FROM=$BACK_red SS_NAME=printer timeout 300 "$SS" lua "$_hw_seed/printer.lua" \
        >"$T/out" 2>"$T/err"; then
        results "$T/out" >"$T/actual"
        same "$_hw" "$T/expected" "$T/actual"
    else
        notok "$_hw" "the printer's exit status $?"
        tail -20 "$T/err"
    fi
}

# ---- data and results ----------------------------------------------------

# pipeline_dir DIR: DIR with the delayed-flights stage and sink scripts
# (mapper, filter, reducer, printer) and tests/fixtures/pace.lua, a first
# stage that passes lines on after 50 us of CPU each
pipeline_dir() {
    mkdir -p "$1"
    for _pd in mapper filter reducer printer; do cp "$ROOT/examples/flights/$_pd.lua" "$1/"; done
    cp "$ROOT/tests/fixtures/pace.lua" "$1/"
}

# check_help CMD...: `securestreams CMD --help` prints its usage, exit 0
check_help() {
    for _ch in "$@"; do
        check "$_ch --help exits 0" sh -c "'$SS' $_ch --help | grep -q usage"
    done
}

# flights N: path of a generated file of N rows (seed 7), made once per build
flights() {
    _fl="$DATA/flights-$1.csv"
    if [ ! -s "$_fl" ]; then
        "$SS" gen flights --rows "$1" --seed 7 >"$_fl.tmp" && mv "$_fl.tmp" "$_fl"
    fi
    echo "$_fl"
}

# expected FILE: the awk reference answer, in the printer's format
expected() {
    _ex="$1.expected"
    if [ ! -s "$_ex" ]; then
        mawk -F, -f "$ROOT/tools/delays.awk" "$1" >"$_ex.tmp" && mv "$_ex.tmp" "$_ex"
    fi
    cat "$_ex"
}

# results FILE: the printer's output without its comment line
results() { grep -v '^#' "$1"; }

# same NAME EXPECTED_FILE ACTUAL_FILE
same() {
    if cmp -s "$2" "$3"; then ok "$1"; else notok "$1" "results differ"; diff "$2" "$3" | head -20; fi
}

# run_same NAME ARGS...: `securestreams run ARGS` (at most 10 min), stdout
# in $T/out and stderr in $T/err; same NAME when it exits 0 (its results
# against $T/expected), else not ok with its exit status and the end of its
# stderr. Returns run's exit status, so that a caller checks more only after
# a run that succeeded.
run_same() {
    _rs=$1
    shift
    timeout 600 "$SS" run "$@" >"$T/out" 2>"$T/err"
    _rs_rc=$?
    if [ $_rs_rc -eq 0 ]; then
        results "$T/out" >"$T/actual"
        same "$_rs" "$T/expected" "$T/actual"
    else
        notok "$_rs" "exit status $_rs_rc"
        tail -20 "$T/err"
    fi
    return $_rs_rc
}
