#!/bin/sh
# Runs the tests: the C unit tests (cmocka), the Lua tests and the
# integration tests (real processes on loopback), then prints one closing
# line "N passed, M failed".
#
# Usage: tests/run.sh [--tier fast|full] [--sanitized] [--counts FILE] [BUILD_DIR] [FILTER]
#   --tier fast    the unit and Lua tests, and the integration tests with a
#                  line "# tier: fast" (run with SS_TIER=fast, which lib.sh's
#                  `rows` reads to pick smaller inputs); full (the default):
#                  every test
#   --sanitized    BUILD_DIR was built with -fsanitize=address,undefined:
#                  UBSan halts on the first error, and a report of either
#                  sanitizer from any process of a test fails that test
#   --counts FILE  append "PASSED FAILED" to FILE, and close with a subtotal
#                  line instead (the caller adds up several runs)
#   FILTER         a substring of the test files' names
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIER=full
SANITIZED=0
COUNTS=""
while [ $# -gt 0 ]; do
    case "$1" in
    --tier) TIER=${2:?--tier wants fast or full}; shift 2 ;;
    --sanitized) SANITIZED=1; shift ;;
    --counts) COUNTS=${2:?--counts wants a file}; shift 2 ;;
    --*) echo "tests/run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
case "$TIER" in fast | full) ;; *) echo "tests/run.sh: --tier fast or full, not $TIER" >&2; exit 2 ;; esac
BUILD=${1:-build}
FILTER=${2:-}
BUILD=$(cd "$ROOT" && cd "$BUILD" && pwd) || exit 2
export SS_BIN="$BUILD/securestreams" SS_ROOT="$ROOT" SS_BUILD="$BUILD" SS_TIER="$TIER"
passed=0
failed=0
failures=""
log=$(mktemp)
sanlogs=$(mktemp -d)
trap 'rm -rf "$log" "$sanlogs"' EXIT
if [ "$SANITIZED" = 1 ]; then
    # Every process writes its reports to files of its own in $sanlogs.
    export ASAN_OPTIONS="log_path=$sanlogs/asan:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$sanlogs/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
fi

count() { # name, passes, fails (and started, the time the test started)
    p=$2
    f=$3
    if [ -n "$(ls -A "$sanlogs")" ]; then
        echo "sanitizer reports while $1 ran:"
        for r in "$sanlogs"/*; do
            echo "--- $(basename "$r")"
            head -40 "$r"
        done
        rm -f "$sanlogs"/*
        f=$((f + 1))
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$f" -gt 0 ] && failures="$failures $1"
    printf '%-40s %4d passed, %d failed  (%d s)\n' "$1" "$p" "$f" $(($(date +%s) - started))
}

selected() { # name: matches FILTER
    case "$1" in *"$FILTER"*) return 0 ;; esac
    return 1
}

for t in "$BUILD"/tests/test_*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    name=$(basename "$t")
    selected "$name" || continue
    started=$(date +%s)
    timeout 300 "$t" >"$log" 2>&1
    rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    [ "$f" -gt 0 ] && cat "$log"
    count "$name" "$p" "$f"
done

for t in "$ROOT"/tests/lua/test_*.lua; do
    [ -f "$t" ] || continue
    name=$(basename "$t")
    selected "$name" || continue
    started=$(date +%s)
    (cd "$ROOT" && timeout 300 "$SS_BIN" lua "$t") >"$log" 2>&1
    rc=$?
    line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    p=$(echo "$line" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) passed.*/\1/p')
    f=$(echo "$line" | sed -n 's/.*passed, \([0-9][0-9]*\) failed.*/\1/p')
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    [ "$f" -gt 0 ] && cat "$log"
    count "$name" "$p" "$f"
done

for t in "$ROOT"/tests/integration/t_*.sh; do
    [ -f "$t" ] || continue
    name=$(basename "$t")
    selected "$name" || continue
    if [ "$TIER" = fast ] && ! grep -q '^# tier: fast$' "$t"; then continue; fi
    started=$(date +%s)
    timeout 900 sh "$t" >"$log" 2>&1
    rc=$?
    p=$(grep -c '^ok ' "$log")
    f=$(grep -c '^not ok ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "(exit status $rc)" >>"$log"; fi
    [ "$f" -gt 0 ] && cat "$log"
    count "$name" "$p" "$f"
done

[ -n "$failures" ] && echo "failing:$failures"
if [ -n "$COUNTS" ]; then
    echo "$passed $failed" >>"$COUNTS"
    echo "subtotal of $(basename "$BUILD") ($TIER tier): $passed passed, $failed failed"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
