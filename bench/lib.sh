# bench/lib.sh - shared by scripts/bench-*: sourced, never run.
#
# Conventions (as scripts/bench): every figure of a results file is measured in
# the same run; the variants alternate inside each round (round 1: A B C,
# round 2: A B C, ...) so the machine's drift biases no variant; a figure is the
# median of ROUNDS; ratios are taken between medians of the same run.
#
# Every script writes out/bench/NAME/results.txt (a plain text table, then the
# machine's description), the data behind each plot (*.dat, tab separated) and
# its plots (*.png, gnuplot). Intermediate files stay in out/bench/NAME/raw/.

set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SS=${SS_BIN:-build/securestreams}
[ -x "$SS" ] || { echo "$0: $SS not built: run make first" >&2; exit 2; }
case "$SS" in /*) ;; *) SS="$ROOT/$SS" ;; esac

# bench_dir NAME: create out/bench/NAME (raw/ emptied) and set OUT to it.
bench_dir() {
    OUT="out/bench/$1"
    mkdir -p "$OUT/raw"
    rm -f "$OUT"/raw/* "$OUT"/*.dat "$OUT"/*.png "$OUT/results.txt"
}

now() { date +%s.%N; }

# median FILE: the median of the numbers in FILE, one a line (the lower
# middle for an even count: the figure is always one that was measured).
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "nan" }'; }
minimum() { sort -g "$1" | awk 'NR == 1 { print $1 }'; }
maximum() { sort -g "$1" | awk '{ v = $1 } END { print v }'; }

# describe_machine: the lines closing every results file.
describe_machine() {
    echo "machine:  $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1)," \
        "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory"
    echo "kernel:   $(uname -srm)"
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:   $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "(working tree may differ)"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min load averages at the end)"
    echo "binary:   $SS"
}

# flights_file ROWS: out/bench/data/flights-ROWS.csv (seed 7), generated once.
# (Not out/flights-ROWS.csv: scripts/bench writes that name with seed 1.)
flights_file() {
    mkdir -p out/bench/data
    _f="out/bench/data/flights-$1.csv"
    if [ ! -s "$_f" ]; then
        "$SS" gen flights --rows "$1" --seed 7 -o "$_f.tmp" >&2
        mv "$_f.tmp" "$_f"
    fi
    echo "$_f"
}

# bench_key: the data key of every benchmark (out/bench/data/bench.key).
bench_key() {
    mkdir -p out/bench/data
    [ -s out/bench/data/bench.key ] || "$SS" keygen -o out/bench/data/bench.key >/dev/null
    echo out/bench/data/bench.key
}

# need CMD...: fail early with the Debian package to install.
need() {
    for _c in "$@"; do
        command -v "$_c" >/dev/null 2>&1 || {
            echo "$0: $_c not found: run scripts/install-deps" >&2
            exit 2
        }
    done
}

# finish_results: append the machine's description to results.txt and show it.
finish_results() {
    { echo; describe_machine; } >>"$OUT/results.txt"
    cat "$OUT/results.txt"
    echo "(written to $OUT/results.txt; plots: $(ls "$OUT"/*.png 2>/dev/null | tr '\n' ' '))"
}

# rps ROWS FILE STAT: rows/s from a file of run times in seconds; STAT is
# median, minimum or maximum of the rate (the median run by time, so that
# rows/s and seconds always describe the same run).
rps() {
    case $3 in
    median) _s=$(median "$2") ;;
    minimum) _s=$(maximum "$2") ;;
    maximum) _s=$(minimum "$2") ;;
    esac
    echo "$1 $_s" | awk '{ print $1 / $2 }'
}
