# Seed-style stage scripts wired by hand with routers between them give the
# same results as `run` and awk, with several workers per stage.
. "$(dirname "$0")/lib.sh"
F=$(flights 1000000)
expected "$F" >"$T/expected"
S="$ROOT/examples/flights/seed"
wire() { # mappers filters reducers
    for r in data map filt red; do start_router $r || exit 1; done
    i=0; while [ $i -lt $1 ]; do i=$((i + 1))
        FROM=$BACK_data TO=$FRONT_map SS_NAME=mapper#$i bg "$SS" lua "$S/mapper.lua"; done
    i=0; while [ $i -lt $2 ]; do i=$((i + 1))
        FROM=$BACK_map TO=$FRONT_filt SS_NAME=filter#$i bg "$SS" lua "$S/filter.lua"; done
    i=0; while [ $i -lt $3 ]; do i=$((i + 1))
        FROM=$BACK_filt TO=$FRONT_red SS_NAME=reducer#$i bg "$SS" lua "$S/reducer.lua"; done
    DATA_FILE=$F TO=$FRONT_data SS_NAME=source bg "$SS" lua "$S/data-stream.lua"
    if FROM=$BACK_red SS_NAME=printer timeout 300 "$SS" lua "$S/printer.lua" >"$T/out" 2>"$T/err"; then
        results "$T/out" >"$T/actual"
        same "hand-wired seed scripts, $1/$2/$3 workers, equal awk" "$T/expected" "$T/actual"
    else
        notok "hand-wired printer, $1/$2/$3 workers" "exit status $?"
        tail -20 "$T/err"
    fi
}
wire 1 1 1
wire 3 2 2
wire 4 1 3
