# The enclave at the process level (docs/enclave.md): the internal command
# refuses to run by hand; enclave-bench measures a call; a malformed
# SS_ENCLAVE_HEAP or SS_ENCLAVE_BUDGET is named; an isolated enclave seen
# from outside is locked down (Seccomp 2, NoNewPrivs 1), holds only its
# doorbell and the standard descriptors, has its heap committed up front,
# and goes away by itself when its host is killed.
# tier: fast
. "$(dirname "$0")/lib.sh"

"$SS" enclave-child >/dev/null 2>"$T/err"
check "enclave by hand: usage error (exit 2)" test $? -eq 2
check "enclave by hand: says it is internal" grep -q internal "$T/err"

"$SS" enclave-bench --help >"$T/out" 2>&1
check "enclave-bench --help exits 0" grep -q usage "$T/out"
"$SS" enclave-bench --calls 2000 >"$T/bench" 2>"$T/err"
check "enclave-bench: exit 0" test $? -eq 0
for what in "plain Lua function call" "C function call (from Lua)" "enclave round trip (isolated)" \
    "enclave round trip (isolated, doorbell only)" "enclave round trip (inprocess)" "isolated / inprocess"; do
    check "enclave-bench: prints $what" grep -qF "$what" "$T/bench"
done
iso=$(sed -n 's/^ *enclave round trip (isolated) *\([0-9.]*\) ns$/\1/p' "$T/bench")
inp=$(sed -n 's/^ *enclave round trip (inprocess) *\([0-9.]*\) ns$/\1/p' "$T/bench")
check "enclave-bench: an isolated call costs more than an inprocess one" \
    awk -v a="$iso" -v b="$inp" 'BEGIN { exit !(a > b && b > 0) }'

SS_ENCLAVE_HEAP=lots "$SS" enclave-bench --calls 10 >/dev/null 2>"$T/err"
check "SS_ENCLAVE_HEAP=lots: exit 1" test $? -eq 1
check "SS_ENCLAVE_HEAP=lots: named" grep -q 'SS_ENCLAVE_HEAP=lots' "$T/err"
SS_ENCLAVE_BUDGET=-5 "$SS" enclave-bench --calls 10 >/dev/null 2>"$T/err"
check "SS_ENCLAVE_BUDGET=-5: exit 1" test $? -eq 1
check "SS_ENCLAVE_BUDGET=-5: named" grep -q 'SS_ENCLAVE_BUDGET=-5' "$T/err"
for b in 1e8 5ms 2days; do
    SS_ENCLAVE_BUDGET=$b "$SS" enclave-bench --calls 10 >/dev/null 2>"$T/err"
    check "SS_ENCLAVE_BUDGET=$b: exit 1, named" \
        sh -c "test $? -eq 1 && grep -q 'SS_ENCLAVE_BUDGET=$b\|budget of' '$T/err'"
done
for b in 500ms 2s 250; do
    SS_ENCLAVE_HEAP=16M SS_ENCLAVE_BUDGET=$b "$SS" enclave-bench --calls 10 >/dev/null 2>"$T/err"
    check "SS_ENCLAVE_HEAP=16M SS_ENCLAVE_BUDGET=$b: accepted" test $? -eq 0
done

# a long benchmark as the host of two isolated enclaves
bg "$SS" enclave-bench --calls 100000000 >/dev/null 2>"$T/host.err"
host=$LAST
locked() { # PID: the enclave is ready (its filter is on)
    grep -q '^Seccomp:[[:space:]]*2' "/proc/$1/status" 2>/dev/null
}
two_locked() { # sets kids: the host's children
    kids=$(pgrep -P "$host" | tr '\n' ' ')
    n=0
    for k in $kids; do locked "$k" && n=$((n + 1)); done
    [ "$n" -ge 2 ]
}
poll_until 20 two_locked   # the checks below say what was missing
check "host: two isolated enclaves started" test "$(echo $kids | wc -w)" -eq 2
for k in $kids; do
    check "enclave $k: Seccomp 2 (filter)" grep -q '^Seccomp:[[:space:]]*2' "/proc/$k/status"
    check "enclave $k: NoNewPrivs 1" grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$k/status"
    check "enclave $k: descriptors 0 1 2 and the doorbell 3 only" \
        test "$(ls "/proc/$k/fd" | sort -n | tr '\n' ' ')" = "0 1 2 3 "
    check "enclave $k: runs the enclave command" grep -q "enclave-child" "/proc/$k/cmdline"
    rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$k/status")
    check "enclave $k: its 64 MiB heap is committed up front" test "${rss:-0}" -ge 65536
done
kill -9 "$host"
wait "$host" 2>/dev/null
for k in $kids; do
    check "enclave $k: exits when its host is killed" poll_until 5 gone "$k"
done
