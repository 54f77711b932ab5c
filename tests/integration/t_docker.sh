# The pipeline as containers: the image built with no registry, the
# delayed-flights pipeline deployed with Compose (several workers per stage,
# containers talking by service name) giving what the local `run` gives, a
# stage scaled while the stream runs and a worker container stopped
# mid-stream with exact results, then the same on a single-node Swarm
# (docker swarm init, docker stack deploy, docker service scale) with keys as
# secrets. Everything it creates goes at the end: stacks, projects,
# containers, networks, the image, and the swarm if it made one.
# Without a Docker engine it says so in one line and checks nothing.
. "$(dirname "$0")/lib.sh"
if ! timeout 20 docker info >/dev/null 2>&1; then
    echo "ok docker tests skipped: no Docker engine answers"
    exit 0
fi
# One run at a time per engine: two runs would share one swarm, and one
# would leave it under the other (make test and make asan, two trees).
if command -v flock >/dev/null 2>&1; then
    exec 9>/tmp/securestreams-docker-tests.lock
    if ! flock -w 600 9; then
        notok "docker tests: the engine to ourselves" "another run held /tmp/securestreams-docker-tests.lock for 10 min"
        exit 1
    fi
fi
ID=ssd$$
IMG="securestreams-test:$ID"
PROJECTS=""          # FILE:PROJECT of every Compose project brought up
STACK=""
SWARM_MADE=0
LABELLED=""
GWBRIDGE_BEFORE=$(docker network ls -q --filter name='^docker_gwbridge$')

dcleanup() {
    for pf in $PROJECTS; do
        timeout 90 docker-compose -p "${pf#*:}" -f "${pf%%:*}" down -v -t 1 >/dev/null 2>&1
    done
    if [ -n "$STACK" ]; then
        timeout 60 docker stack rm "$STACK" >/dev/null 2>&1
        # stack rm returns before its containers and network are gone
        poll_until 30 stack_gone
    fi
    [ -n "$LABELLED" ] && timeout 30 docker node update --label-rm securestreams.data "$LABELLED" >/dev/null 2>&1
    if [ "$SWARM_MADE" = 1 ]; then
        timeout 60 docker swarm leave --force >/dev/null 2>&1
        # The swarm's gateway bridge goes too, once leaving has let go of it.
        [ -z "$GWBRIDGE_BEFORE" ] && poll_until 10 gwbridge_gone
    fi
    timeout 60 docker rmi -f "$IMG" >/dev/null 2>&1
    cleanup
}
# stack_gone: no container or network of the stack is left (removing the
# containers that linger)
stack_gone() {
    left=$(docker ps -aq --filter label=com.docker.stack.namespace="$STACK")
    [ -n "$left" ] && echo "$left" | xargs -r docker rm -f >/dev/null 2>&1
    [ -z "$left$(docker network ls -q --filter label=com.docker.stack.namespace="$STACK")" ]
}
# gwbridge_gone: the swarm's gateway bridge is removed (or removable now)
gwbridge_gone() {
    [ -z "$(docker network ls -q --filter name='^docker_gwbridge$')" ] ||
        timeout 30 docker network rm docker_gwbridge >/dev/null 2>&1
}
trap dcleanup EXIT
trap 'exit 1' INT TERM HUP
# Each probe asks the engine: every half second is often enough.
WAIT_EVERY=0.5

if ! command -v docker-compose >/dev/null 2>&1; then
    notok "docker-compose is installed" "the engine answers but docker-compose is missing (apt-get install docker-compose)"
    exit 1
fi

# The image: FROM scratch, from this machine's binary and libraries.
t0=$(date +%s)
if "$ROOT/docker/build-scratch-image" "$SS" "$IMG" >"$T/build.log" 2>&1; then
    ok "image builds without a registry ($(($(date +%s) - t0)) s)"
else
    notok "image builds without a registry" "$(tail -5 "$T/build.log")"
    exit 1
fi
check "the image runs securestreams" sh -c "timeout 60 docker run --rm '$IMG' version | grep -q '^securestreams '"
check "the image is FROM scratch: no shell" sh -c "! timeout 60 docker run --rm --entrypoint /bin/sh '$IMG' -c true >/dev/null 2>&1"

F=$(flights 200000)
expected "$F" >"$T/expected"
"$SS" run "$ROOT/examples/flights/flights.spec.lua" --input "$F" >"$T/local.out" 2>"$T/local.err"
results "$T/local.out" >"$T/local.results"
same "local run equals awk" "$T/expected" "$T/local.results"

# A pipeline directory for the runs that must last: a first stage that spends
# CPU on every line (at least 10 s of it in all) and passes it on unchanged.
P="$T/pipe"
mkdir -p "$T/keys" "$T/curve"
pipeline_dir "$P"
cat >"$P/paced.spec.lua" <<'EOF'
return {
  name = "paced-flights",
  source = { file = "flights.csv" },
  stages = {
    { name = "pace",    script = "pace.lua",    workers = 2 },
    { name = "mapper",  script = "mapper.lua",  workers = 2, enclave = true },
    { name = "filter",  script = "filter.lua",  workers = 2 },
    { name = "reducer", script = "reducer.lua", workers = 2 },
  },
  sink = { script = "printer.lua" },
  security = "encrypted",
  key = "../keys/data.key",
}
EOF
"$SS" keygen -o "$T/keys/data.key" >/dev/null 2>&1
"$SS" keygen --curve -o "$T/curve/router" >/dev/null 2>&1
"$SS" keygen --curve -o "$T/curve/client" >/dev/null 2>&1

# cid PROJECT FILE SERVICE [N]: the id of a Compose service's container
cid() { timeout 30 docker-compose -p "$1" -f "$2" ps -q "$3" 2>/dev/null | sed -n "${4:-1}p"; }
# sink_done CONTAINER OUT: wait for the sink, its stdout to OUT, stderr to OUT.err
sink_done() {
    st=$(timeout 240 docker wait "$1" 2>/dev/null)
    docker logs "$1" >"$2" 2>"$2.err"
    [ "$st" = 0 ]
}

# 1. Compose, the delayed-flights pipeline as the examples give it, three
#    workers per stage.
C="$T/compose.yml"
"$SS" deploy "$ROOT/examples/flights/flights.spec.lua" --format compose --input "$F" \
    --workers 3 --image "$IMG" -o "$C"
PA=${ID}a
PROJECTS="$PROJECTS $C:$PA"
t0=$(date +%s)
if timeout 180 docker-compose -p "$PA" -f "$C" up -d >"$T/up.log" 2>&1; then
    ok "compose: up"
    SINK=$(cid "$PA" "$C" sink)
    if sink_done "$SINK" "$T/compose.out"; then
        ok "compose: the sink exits 0 ($(($(date +%s) - t0)) s from up)"
    else
        notok "compose: the sink exits 0" "$(tail -5 "$T/compose.out.err")"
    fi
    same "compose: results identical to the local run" "$T/local.out" "$T/compose.out"
    check "compose: complete" grep -q 'complete: all' "$T/compose.out.err"
    check "compose: three workers in each stage" sh -c \
        "grep -Eq '^  mapper +3 ' '$T/compose.out.err' && grep -Eq '^  reducer +3 ' '$T/compose.out.err'"
    R1=$(cid "$PA" "$C" router1)
    check "compose: workers reached router1 by service name" sh -c \
        "docker logs '$R1' 2>&1 | grep -c 'consumer filter (id .*) joined' | grep -qx 3"
else
    notok "compose: up" "$(tail -5 "$T/up.log")"
fi
timeout 90 docker-compose -p "$PA" -f "$C" down -v -t 1 >/dev/null 2>&1
PROJECTS=""

# 2. Compose, encrypted, an enclave stage: the first stage scaled from 2 to 4
#    workers once the source has joined, then one of its first workers
#    stopped mid-stream.
C="$T/paced.yml"
"$SS" deploy "$P/paced.spec.lua" --format compose --input "$F" --image "$IMG" -o "$C"
PB=${ID}b
PROJECTS="$PROJECTS $C:$PB"
t0=$(date +%s)
if timeout 180 docker-compose -p "$PB" -f "$C" up -d >"$T/up.log" 2>&1; then
    ok "compose paced: up"
    R0=$(cid "$PB" "$C" router0)
    joined() { [ "$(docker logs "$R0" 2>&1 | grep -c "$1")" -ge "$2" ]; }
    check "compose paced: the source joins router0" poll_until 60 joined 'producer source (id .*) joined' 1
    if timeout 120 docker-compose -p "$PB" -f "$C" up -d --no-deps --no-recreate --scale pace=4 pace \
        >"$T/scale.log" 2>&1; then
        ok "compose paced: --scale pace=4 while the stream runs"
    else
        notok "compose paced: --scale pace=4 while the stream runs" "$(tail -3 "$T/scale.log")"
    fi
    check "compose paced: four pace workers joined router0" poll_until 60 joined 'consumer pace (id .*) joined' 4
    check "compose paced: the stream is still running" sh -c "! docker logs '$R0' 2>&1 | grep -q 'end of stream'"
    W1=$(cid "$PB" "$C" pace 1)
    check "compose paced: docker stop one pace worker" sh -c "timeout 60 docker stop -t 1 '$W1' >/dev/null"
    SINK=$(cid "$PB" "$C" sink)
    if sink_done "$SINK" "$T/paced.out"; then
        ok "compose paced: the sink exits 0 ($(($(date +%s) - t0)) s from up)"
    else
        notok "compose paced: the sink exits 0" "$(tail -5 "$T/paced.out.err")"
    fi
    same "compose paced: results identical to the local run" "$T/local.out" "$T/paced.out"
    check "compose paced: complete" grep -q 'complete: all' "$T/paced.out.err"
    check "compose paced: the stopped worker was killed, not finished" sh -c \
        "docker inspect -f '{{.State.ExitCode}}' '$W1' | grep -qv '^0$'"
    check "compose paced: three pace workers reported (4 joined, 1 stopped)" grep -Eq '^  pace +3 ' "$T/paced.out.err"
else
    notok "compose paced: up" "$(tail -5 "$T/up.log")"
fi
timeout 90 docker-compose -p "$PB" -f "$C" down -v -t 1 >/dev/null 2>&1
PROJECTS=""

# 3. A single-node Swarm: the same paced pipeline as a stack, with the data
#    key and CurveZMQ keys as secrets, and `docker service scale` mid-stream.
state=$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)
if [ "$state" = inactive ]; then
    if timeout 60 docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >"$T/swarm.log" 2>&1; then
        SWARM_MADE=1
        ok "swarm: init (a single node on loopback)"
    else
        notok "swarm: init" "$(tail -3 "$T/swarm.log")"
    fi
elif [ "$(docker info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
    ok "swarm: this engine is already a manager; using its swarm"
else
    notok "swarm: a manager to deploy to" "this engine is in a swarm as a worker (state $state)"
fi
if [ "$(docker info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
    NODE=$(docker info -f '{{.Swarm.NodeID}}')
    timeout 30 docker node update --label-add securestreams.data=true "$NODE" >/dev/null && LABELLED=$NODE
    S="$T/stack.yml"
    "$SS" deploy "$P/paced.spec.lua" --format swarm --input "$F" --image "$IMG" --curve "$T/curve" -o "$S"
    STACK=$ID
    t0=$(date +%s)
    # From another directory: host paths are relative to the file, not to here.
    if (cd / && timeout 120 docker stack deploy --resolve-image never -c "$S" "$STACK") >"$T/deploy.log" 2>&1; then
        ok "swarm: stack deploy"
        # task CONTAINER of SERVICE, once it exists
        task() { docker ps -aq --filter label=com.docker.swarm.service.name="$STACK"_"$1" | head -1; }
        slogs() { timeout 30 docker service logs --raw "$STACK"_"$1" 2>&1; }
        check "swarm: the source joins router0" poll_until 120 sh -c \
            "timeout 30 docker service logs --raw '${STACK}_router0' 2>&1 | grep -q 'producer source (id .*) joined'"
        if timeout 60 docker service scale --detach "$STACK"_pace=3 >"$T/scale.log" 2>&1; then
            ok "swarm: docker service scale pace=3 while the stream runs"
        else
            notok "swarm: docker service scale pace=3" "$(tail -3 "$T/scale.log")"
        fi
        poll_until 120 sh -c "test -n \"\$(docker ps -aq --filter label=com.docker.swarm.service.name='${STACK}_sink' --filter status=exited)\""
        SINK=$(task sink)
        if [ -n "$SINK" ] && sink_done "$SINK" "$T/swarm.out"; then
            ok "swarm: the sink exits 0 ($(($(date +%s) - t0)) s from deploy)"
        else
            notok "swarm: the sink exits 0" "$(tail -5 "$T/swarm.out.err" 2>/dev/null)"
            for s in router0 pace mapper source; do slogs $s | tail -5; done
        fi
        same "swarm: results identical to the local run" "$T/local.out" "$T/swarm.out"
        check "swarm: complete" grep -q 'complete: all' "$T/swarm.out.err"
        check "swarm: three pace workers reported (scaled from 2)" grep -Eq '^  pace +3 ' "$T/swarm.out.err"
        slogs router0 >"$T/router0.log"
        check "swarm: router0 is a CurveZMQ server with one client key" grep -q 'CurveZMQ: server public key .* 1 client keys allowed' "$T/router0.log"
        check "swarm: no handshake refused" sh -c "! grep -q 'refused a' '$T/router0.log'"
    else
        notok "swarm: stack deploy" "$(tail -5 "$T/deploy.log")"
    fi
fi
dcleanup
trap - EXIT
check "cleanup: no container of this test left" sh -c \
    "test -z \"\$(docker ps -aq --filter label=com.docker.compose.project=$PA; docker ps -aq --filter label=com.docker.compose.project=$PB; docker ps -aq --filter label=com.docker.stack.namespace=$ID)\""
check "cleanup: no network of this test left" sh -c "! docker network ls --format '{{.Name}}' | grep -q '^$ID'"
check "cleanup: the test image is gone" sh -c "! docker image inspect '$IMG' >/dev/null 2>&1"
if [ "$SWARM_MADE" = 1 ]; then
    check "cleanup: the swarm made here is left" test "$(docker info -f '{{.Swarm.LocalNodeState}}')" = inactive
    if [ -z "$GWBRIDGE_BEFORE" ]; then
        check "cleanup: the swarm's docker_gwbridge is gone" \
            test -z "$(docker network ls -q --filter name='^docker_gwbridge$')"
    fi
fi
