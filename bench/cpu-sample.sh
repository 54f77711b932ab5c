#!/bin/sh
# bench/cpu-sample.sh PID OUT [INTERVAL]: while process PID (a `securestreams
# run`) lives, every INTERVAL seconds (default 0.5) append to OUT one line per
# component of that run:
#   SECONDS_SINCE_START  COMPONENT  STAGE  CPU_TICKS  RSS_KIB  HWM_KIB  CHILD_RSS_KIB
# CPU_TICKS is utime + stime from /proc/P/stat (clock ticks, getconf CLK_TCK),
# summed over the component's process and its children (an isolated
# enclave's child counts for its worker). RSS_KIB and HWM_KIB are VmRSS and
# VmHWM (its peak so far) from /proc/P/status of the component's own process;
# CHILD_RSS_KIB is VmRSS summed over its children (an isolated enclave), kept
# apart so that an enclave's heap, committed at start-up, does not hide the
# host process's own memory (0 when unknown: a process that has just exited).
# Components are found as children of PID only (`pgrep -a -P PID`), never by
# name: on a shared machine other pipelines run the same command lines. STAGE
# is the worker's --stage, or source, sink, router. The time of a sample is
# /proc/uptime read by the same `cat` as the stat and status files, so a
# sampler delayed by a busy machine does not skew the rates. The throughput of
# a stage over time is estimated from these (its CPU use per interval): the
# pipeline reports no per-stage counts while it runs. scripts/bench-throughput
# uses the CPU column, scripts/bench-memory the memory columns.
pid=$1
out=$2
interval=${3:-0.5}
: >"$out"
# PID may be a shell that runs `securestreams run` as its child: use the child
i=0
while [ $i -lt 20 ] && kill -0 "$pid" 2>/dev/null; do
    case " $(ps -o args= -p "$pid" 2>/dev/null) " in
    *" run "*) break ;;
    esac
    c=$(pgrep -P "$pid" 2>/dev/null | head -1)
    [ -n "$c" ] && pid=$c && continue
    sleep 0.05
    i=$((i + 1))
done
start=""
while kill -0 "$pid" 2>/dev/null; do
    comps=$(pgrep -a -P "$pid" || true)
    files=""
    for p in $(echo "$comps" | awk 'NF { print $1 }'); do
        files="$files /proc/$p/stat /proc/$p/status"
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
            files="$files /proc/$c/stat /proc/$c/status"
        done
    done
    # shellcheck disable=SC2086
    stats=$(cat /proc/uptime $files 2>/dev/null || true)
    [ -n "$start" ] || start=$(echo "$stats" | awk 'NR == 1 { print $1 }')
    {
        echo "$comps" | sed 's/^/C /'
        echo "$stats" | sed '1s/^/U /; 2,$s/^/S /'
    } | awk -v t0="$start" '
        $1 == "U" { t = $2; next }
        # a child of PID still running `run` is a component between fork and exec
        $1 == "C" && NF > 2 && $4 != "run" {
            pid = $2; name = ""; stage = ""
            for (i = 3; i <= NF; i++) {
                if ($i == "--name") name = $(i + 1)
                if ($i == "--stage") stage = $(i + 1)
            }
            if ($4 == "router") stage = "router"
            else if ($4 == "source") { stage = "source"; if (name == "") name = "source" }
            else if ($4 == "sink") stage = "sink"
            if (name == "") name = $4 "-" pid
            if (stage == "") stage = "other"
            cname[pid] = name; cstage[pid] = stage
            next
        }
        # /proc/P/status: "Pid:" comes before "VmHWM:" and "VmRSS:"
        $1 == "S" && $2 == "Pid:" { cur = $3; next }
        $1 == "S" && $2 == "VmRSS:" { rss[cur] = $3; next }
        $1 == "S" && $2 == "VmHWM:" { hwm[cur] = $3; next }
        $1 == "S" && $2 ~ /^[0-9]+$/ {
            # S pid (comm) state ppid ... utime(14) stime(15): comm has no space here
            p = $2; pp = $5; ticks[p] = $15 + $16; parent[p] = pp
        }
        END {
            for (p in ticks) {
                if (p in cname) sum[p] += ticks[p]
                else if (parent[p] in cname) { sum[parent[p]] += ticks[p]; crss[parent[p]] += rss[p] }
            }
            for (p in cname)
                printf "%.3f\t%s\t%s\t%d\t%d\t%d\t%d\n", t - t0, cname[p], cstage[p], sum[p],
                    rss[p], hwm[p], crss[p]
        }' >>"$out"
    sleep "$interval"
done
