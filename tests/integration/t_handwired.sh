# Seed-style stage scripts wired by hand with routers between them give the
# same results as `run` and awk, with several workers per stage.
. "$(dirname "$0")/lib.sh"
F=$(flights 1000000)
expected "$F" >"$T/expected"
for w in "1 1 1" "3 2 2" "4 1 3"; do
    set -- $w
    hand_wired "hand-wired seed scripts, $1/$2/$3 workers, equal awk" \
        "$ROOT/examples/flights/seed" "$1" "$2" "$3" || exit 1
done
