# The command line: --help everywhere, install, the generator's contract.
# tier: fast
. "$(dirname "$0")/lib.sh"
check_help run gen router source worker sink lua
check "no command: usage and exit 2" sh -c "'$SS' >/dev/null 2>&1; test \$? -eq 2"
check "unknown command: exit 2" sh -c "'$SS' frobnicate 2>/dev/null; test \$? -eq 2"
check "make install PREFIX" sh -c "make -s -C '$ROOT' BUILD='$SS_BUILD' install PREFIX='$T/prefix' >/dev/null && '$T/prefix/bin/securestreams' version"
"$SS" gen flights --rows 5000 --seed 3 >"$T/a.csv"
"$SS" gen flights --rows 5000 --seed 3 -o "$T/b.csv"
"$SS" gen flights --rows 5000 --seed 4 >"$T/c.csv"
check "gen: deterministic for a seed" cmp -s "$T/a.csv" "$T/b.csv"
check "gen: seeds differ" sh -c "! cmp -s '$T/a.csv' '$T/c.csv'"
check "gen: header plus rows" test "$(wc -l <"$T/a.csv")" -eq 5001
check "gen: 29 columns" test "$(awk -F, '{print NF}' "$T/a.csv" | sort -u)" = 29
check "gen: bad --rows refused" sh -c "! '$SS' gen flights --rows nope 2>/dev/null"
