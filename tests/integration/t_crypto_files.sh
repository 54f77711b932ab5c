# keygen, encrypt and decrypt from the command line (docs/crypto.md): key
# files are 0600 and never overwritten, sealed files round-trip byte for byte
# and hold no plaintext, another key, a loose key file, a damaged or
# truncated file are refused with a clear message and leave no output, and
# both commands stream a 1 GB file in constant memory.
# tier: fast
. "$(dirname "$0")/lib.sh"

check_help keygen encrypt decrypt
"$SS" keygen >/dev/null 2>&1
check "keygen without -o: usage error (exit 2)" test $? -eq 2
"$SS" encrypt -k "$T/none" 2>/dev/null
check "encrypt without IN OUT: usage error (exit 2)" test $? -eq 2

# keygen
"$SS" keygen -o "$T/key" >"$T/out" 2>"$T/err"
check "keygen: exit 0" test $? -eq 0
check "keygen: key file is 0600" test "$(stat -c %a "$T/key")" = 600
check "keygen: prints the key id" grep -q "key id $(sed -n 's/^id //p' "$T/key")" "$T/out"
cp "$T/key" "$T/key.copy"
"$SS" keygen -o "$T/key" >/dev/null 2>"$T/err"
check "keygen: refuses to overwrite (exit 1)" test $? -eq 1
check "keygen: says the file exists" grep -q 'already exists' "$T/err"
check "keygen: existing key untouched" cmp -s "$T/key" "$T/key.copy"
"$SS" keygen -o "$T/other" >/dev/null 2>&1
check "keygen: two keys differ" sh -c "! cmp -s '$T/key' '$T/other'"
"$SS" keygen --curve -o "$T/curve" >/dev/null 2>"$T/err"
check "keygen --curve: key pair written" test -s "$T/curve" -a -s "$T/curve.pub"
check "keygen --curve: secret file 0600" test "$(stat -c %a "$T/curve")" = 600
"$SS" keygen --curve -o "$T/curve" >/dev/null 2>"$T/err"
check "keygen --curve: refuses to overwrite" grep -q 'already exists' "$T/err"

# round trip of a generated file
F=$(flights 200000)
"$SS" encrypt -k "$T/key" "$F" "$T/sealed" 2>"$T/err"
check "encrypt: exit 0" test $? -eq 0
check "encrypt: a sealed file" test "$(head -c 8 "$T/sealed")" = SSSEALED
check "encrypt: no temporary file left" test ! -e "$T/sealed.tmp"
"$SS" decrypt -k "$T/key" "$T/sealed" "$T/plain" 2>"$T/err"
check "decrypt: exit 0" test $? -eq 0
check "decrypt: byte-identical to the input" cmp -s "$F" "$T/plain"
check "decrypt: output is 0600" test "$(stat -c %a "$T/plain")" = 600

# a canary in the plain file is nowhere in the sealed one
awk 'NR == 1000 { print "CANARY-5e1f,canary-line" } { print }' "$F" >"$T/canary.csv"
check "canary: present in the plain file" test "$(grep -a -c CANARY-5e1f "$T/canary.csv")" -eq 1
"$SS" encrypt -k "$T/key" "$T/canary.csv" "$T/canary.sealed" 2>/dev/null
check "canary: absent from the sealed file" test "$(grep -a -c CANARY-5e1f "$T/canary.sealed")" -eq 0
check "canary: no row in clear either" test "$(grep -a -c ',NA,' "$T/canary.sealed")" -eq 0

# edge cases through the commands
printf 'a,b\r\n1,2\r\n3,4' >"$T/crlf.csv"
: >"$T/empty.csv"
for f in crlf empty; do
    "$SS" encrypt -k "$T/key" --no-header "$T/$f.csv" "$T/$f.sealed" 2>/dev/null &&
        "$SS" decrypt -k "$T/key" "$T/$f.sealed" "$T/$f.back" 2>/dev/null
    check "$f file: round trip byte-identical" cmp -s "$T/$f.csv" "$T/$f.back"
done

# refusals
"$SS" decrypt -k "$T/other" "$T/sealed" "$T/wrong" 2>"$T/err"
check "another key: exit 1" test $? -eq 1
check "another key: names both key ids" \
    grep -q "was sealed with another key (key id $(sed -n 's/^id //p' "$T/key"); .*other has $(sed -n 's/^id //p' "$T/other"))" "$T/err"
check "another key: no output" test ! -e "$T/wrong" -a ! -e "$T/wrong.tmp"
chmod 644 "$T/key"
"$SS" encrypt -k "$T/key" "$F" "$T/loose" 2>"$T/err"
check "key file 0644: encrypt refused (exit 1)" test $? -eq 1
check "key file 0644: says chmod 600" grep -q 'readable or writable by others (mode 0644); chmod 600 it' "$T/err"
"$SS" decrypt -k "$T/key" "$T/sealed" "$T/loose" 2>"$T/err"
check "key file 0644: decrypt refused" grep -q 'chmod 600 it' "$T/err"
chmod 600 "$T/key"
size=$(stat -c %s "$T/sealed")
head -c $((size / 2)) "$T/sealed" >"$T/half.sealed"
"$SS" decrypt -k "$T/key" "$T/half.sealed" "$T/half" 2>"$T/err"
check "truncated: exit 1" test $? -eq 1
check "truncated: says so" grep -q 'truncated after batch [0-9]* (no end-of-stream record)' "$T/err"
check "truncated: no partial plaintext" test ! -e "$T/half" -a ! -e "$T/half.tmp"
cp "$T/sealed" "$T/bad.sealed"
# flip one bit of the byte at a third of the file (writing a fixed byte
# would change nothing when the byte already had that value)
byte=$(od -An -tu1 -j $((size / 3)) -N 1 "$T/bad.sealed" | tr -d ' ')
printf "\\$(printf '%03o' $((byte ^ 1)))" | dd of="$T/bad.sealed" bs=1 seek=$((size / 3)) conv=notrunc 2>/dev/null
check "one byte changed: the file differs" sh -c "! cmp -s '$T/sealed' '$T/bad.sealed'"
"$SS" decrypt -k "$T/key" "$T/bad.sealed" "$T/bad" 2>"$T/err"
check "one byte changed: exit 1" test $? -eq 1
check "one byte changed: authentication or framing fails" \
    grep -Eq 'authentication failed|damaged file' "$T/err"
check "one byte changed: no partial plaintext" test ! -e "$T/bad" -a ! -e "$T/bad.tmp"
"$SS" decrypt -k "$T/key" "$F" "$T/notsealed" 2>"$T/err"
check "plain file given to decrypt: not a sealed file" grep -q 'not a sealed file' "$T/err"

# constant memory on a ~1 GB file (~100 MB in the fast tier): peak RSS from
# /usr/bin/time, else VmHWM sampled from /proc while the command runs.
peak() { # CMD...: sets RC and KB (peak resident set, kB) and MS (wall time)
    t0=$(date +%s%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f %M -o "$T/rss" "$@"
        RC=$?
        KB=$(tail -n 1 "$T/rss")
    else
        "$@" &
        pid=$!
        KB=0
        while kill -0 "$pid" 2>/dev/null; do
            v=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
            [ -n "$v" ] && KB=$v
            sleep 0.05   # the sampling interval of a measurement, not a wait
        done
        wait "$pid"
        RC=$?
    fi
    MS=$((($(date +%s%N) - t0) / 1000000))
}
BIG="$T/big.csv"
SIZE=$(rows "1 GB" "100 MB")
"$SS" gen flights --rows "$(rows 10000000 1000000)" -o "$BIG"
bytes=$(stat -c %s "$BIG")
peak "$SS" encrypt -k "$T/key" "$BIG" "$T/big.sealed"
check "$SIZE encrypt: exit 0" test "$RC" -eq 0
check "$SIZE encrypt: peak RSS ${KB} kB < 64 MB" test "$KB" -gt 0 -a "$KB" -lt 65536
echo "# encrypt: $bytes bytes in $MS ms, $((bytes / 1000 / (MS + 1))) MB/s, peak RSS $KB kB"
peak "$SS" decrypt -k "$T/key" "$T/big.sealed" "$T/big.back"
check "$SIZE decrypt: exit 0" test "$RC" -eq 0
check "$SIZE decrypt: peak RSS ${KB} kB < 64 MB" test "$KB" -gt 0 -a "$KB" -lt 65536
echo "# decrypt: $bytes bytes in $MS ms, $((bytes / 1000 / (MS + 1))) MB/s, peak RSS $KB kB"
check "$SIZE: byte-identical" cmp -s "$BIG" "$T/big.back"
rm -f "$BIG" "$T/big.sealed" "$T/big.back"
