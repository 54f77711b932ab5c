# `securestreams deploy`: the Compose and Swarm files it writes are stable,
# name every service with the command line `run` would give it, place and
# equip enclave stages, carry keys as secrets, and are valid for
# docker-compose and `docker stack` (checked when those are installed; no
# engine needed). Containers themselves are tested in t_docker.sh.
# tier: fast
. "$(dirname "$0")/lib.sh"
F=$(flights 2000)
P="$T/pipe"
mkdir -p "$T/out" "$T/keys"
pipeline_dir "$P"
cat >"$P/flights.spec.lua" <<'EOF'
return {
  name = "delayed-flights",
  source = { file = "flights.csv", header = true, batch_bytes = 32768 },
  stages = {
    { name = "mapper",  script = "mapper.lua",  workers = 3, enclave = true },
    { name = "filter",  script = "filter.lua",  workers = 2 },
    { name = "reducer", script = "reducer.lua", workers = 1 },
  },
  sink = { script = "printer.lua" },
  security = "encrypted",
  on_error = "skip",
}
EOF
cp "$F" "$P/flights.csv"
"$SS" keygen -o "$T/keys/data.key" 2>/dev/null
SPEC="$P/flights.spec.lua"

# deploy ARGS...: run in $T/out, stdout to $T/out.yml, stderr to $T/err, status in RC
deploy() { (cd "$T/out" && "$SS" deploy "$@") >"$T/out.yml" 2>"$T/err"; RC=$?; }
# Every deploy draws a fresh run id; the same one is given where files are
# compared byte for byte.
RUN=00112233445566778899aabbccddeeff

deploy "$SPEC" --format compose --key ../keys/data.key --run $RUN
check "compose: exit 0" test "$RC" -eq 0
[ "$RC" -eq 0 ] || cat "$T/err"
cp "$T/out.yml" "$T/c1.yml"
deploy "$SPEC" --format compose --key ../keys/data.key --run $RUN
check "compose: same spec, same file, byte for byte" cmp -s "$T/c1.yml" "$T/out.yml"
deploy "$SPEC" --format compose --key ../keys/data.key
check "compose: a fresh run id for every deploy" \
    test "$(grep -c "SS_RUN.*$RUN" "$T/out.yml")" -eq 0 -a "$(grep -c "SS_RUN.*$RUN" "$T/c1.yml")" -gt 0
check "compose: the sink follows the last stage, expecting one source" \
    grep -A12 '^  sink:$' "$T/c1.yml" | grep -q 'SS_POS.*4'
(cd "$T/out" && "$SS" deploy "$SPEC" --format compose --key ../keys/data.key -o compose.yml --run $RUN)
check "compose: -o FILE writes what stdout shows" cmp -s "$T/c1.yml" "$T/out/compose.yml"
check "compose: no temporary file left" test "$(ls "$T/out")" = compose.yml
for s in router0 router1 router2 router3 mapper filter reducer source sink; do
    check "compose: service $s" grep -q "^  $s:\$" "$T/c1.yml"
done
check "compose: exactly nine services" test "$(grep -c '^  [a-z0-9]*:$' "$T/c1.yml")" -eq 9
check "compose: one network" grep -q '^  pipeline: {}$' "$T/c1.yml"
check "compose: paths relative to the file" grep -q '"../pipe:/pipeline:ro"' "$T/c1.yml"
check "compose: the key bind-mounted read-only" grep -q '"../keys/data.key:/run/secrets/data.key:ro"' "$T/c1.yml"
check "compose: the input's directory at /data" grep -q '"../pipe:/data:ro"' "$T/c1.yml"
check "compose: no absolute host path" sh -c "! grep -q '\"$T' '$T/c1.yml'"
# The stream id comes from the pipeline's name: the same for a copy of the
# spec elsewhere, another for another name.
stream_of() { grep -m1 'SS_STREAM' "$1" | tr -dc 0-9; }
mkdir -p "$T/copy"
cp "$P"/*.lua "$P/flights.csv" "$T/copy/"
sed 's/name = "delayed-flights"/name = "other"/' "$SPEC" >"$P/other.spec.lua"
deploy "$T/copy/flights.spec.lua" --format compose --key ../keys/data.key
check "compose: the stream id follows the name (same name)" test "$(stream_of "$T/out.yml")" = "$(stream_of "$T/c1.yml")"
deploy "$P/other.spec.lua" --format compose --key ../keys/data.key
check "compose: the stream id follows the name (another name)" test "$(stream_of "$T/out.yml")" != "$(stream_of "$T/c1.yml")"

# The components' command lines, as docker-compose reads them, equal run's
# (src/cmd_run.c) with routers at routerI:5555/5556.
if command -v docker-compose >/dev/null 2>&1; then
    if (cd "$T/out" && timeout 60 docker-compose -f compose.yml config) >"$T/norm.yml" 2>"$T/cerr"; then
        ok "compose: docker-compose config accepts the file"
        # cmdline SERVICE: the service's command, one word a line
        cmdline() {
            awk -v s="  $1:" '$0 == s { in_s = 1; next } /^  [a-z0-9]+:$/ { in_s = 0 }
                in_s && /^    command:/ { in_c = 1; next } in_c && /^    [a-z]/ { in_c = 0 }
                in_s && in_c && /^    - / { sub(/^    - /, ""); gsub(/\x27/, ""); print }' "$T/norm.yml" | tr '\n' ' '
        }
        check "compose: router1's command" test "$(cmdline router1)" = \
            "router --from tcp://*:5555 --to tcp://*:5556 --name router1 --linger-ms 30000 "
        check "compose: mapper's command" test "$(cmdline mapper)" = \
            "worker --from tcp://router0:5556 --to tcp://router1:5555 --script /pipeline/mapper.lua --name mapper --stage mapper --pos 1 "
        check "compose: reducer's command" test "$(cmdline reducer)" = \
            "worker --from tcp://router2:5556 --to tcp://router3:5555 --script /pipeline/reducer.lua --name reducer --stage reducer --pos 3 "
        check "compose: sink's command" test "$(cmdline sink)" = \
            "sink --from tcp://router3:5556 --script /pipeline/printer.lua --name sink --stage sink "
        check "compose: source's command" test "$(cmdline source)" = \
            "source --to tcp://router0:5555 --input /data/flights.csv --header --batch-bytes 32768 "
    else
        notok "compose: docker-compose config accepts the file" "$(tail -3 "$T/cerr")"
    fi
else
    ok "compose: docker-compose config not checked: docker-compose is not installed"
fi

# service SERVICE FILE: the service's lines
service() { awk -v s="  $1:" '$0 == s { p = 1; print; next } /^  [a-z0-9_]+:$/ || /^[a-z]/ { p = 0 } p' "$2"; }
service mapper "$T/c1.yml" >"$T/mapper"
service filter "$T/c1.yml" >"$T/filter"
service router0 "$T/c1.yml" >"$T/router0"
service source "$T/c1.yml" >"$T/source"
check "compose: replicas = workers (3)" grep -q 'replicas: 3' "$T/mapper"
check "compose: replicas = workers (2)" grep -q 'replicas: 2' "$T/filter"
check "compose: enclave stage gets SS_ENCLAVE=isolated" grep -q 'SS_ENCLAVE: "isolated"' "$T/mapper"
check "compose: other stages get no SS_ENCLAVE" sh -c "! grep -q SS_ENCLAVE '$T/filter'"
check "compose: workers get the key" grep -q 'SS_KEY_FILE: "/run/secrets/data.key"' "$T/filter"
check "compose: routers get no key" sh -c "! grep -q 'data.key' '$T/router0'"
check "compose: isolated backend needs no device" sh -c "! grep -q sgx_enclave '$T/c1.yml'"
check "compose: workers are restarted on failure" grep -q 'restart: "on-failure:3"' "$T/mapper"
check "compose: the source is never restarted" grep -q 'restart: "no"' "$T/source"

# SGX: devices on the enclave stage only.
deploy "$SPEC" --format compose --key ../keys/data.key --enclave-backend sgx
service mapper "$T/out.yml" >"$T/mapper"
service filter "$T/out.yml" >"$T/filter"
check "compose sgx: SS_ENCLAVE=sgx on the enclave stage" grep -q 'SS_ENCLAVE: "sgx"' "$T/mapper"
check "compose sgx: /dev/sgx_enclave on the enclave stage" grep -q '"/dev/sgx_enclave:/dev/sgx_enclave"' "$T/mapper"
check "compose sgx: /dev/sgx_provision on the enclave stage" grep -q '"/dev/sgx_provision:/dev/sgx_provision"' "$T/mapper"
check "compose sgx: no device on the other stages" sh -c "! grep -q sgx '$T/filter'"

# Swarm: configs, secrets, placement.
deploy "$SPEC" --format swarm --key ../keys/data.key --enclave-backend sgx --run $RUN
check "swarm: exit 0" test "$RC" -eq 0
cp "$T/out.yml" "$T/s1.yml"
deploy "$SPEC" --format swarm --key ../keys/data.key --enclave-backend sgx --run $RUN
check "swarm: same spec, same file, byte for byte" cmp -s "$T/s1.yml" "$T/out.yml"
for s in router0 router1 router2 router3 mapper filter reducer source sink; do
    check "swarm: service $s" grep -q "^  $s:\$" "$T/s1.yml"
done
service mapper "$T/s1.yml" >"$T/mapper"
service filter "$T/s1.yml" >"$T/filter"
service router2 "$T/s1.yml" >"$T/router2"
service source "$T/s1.yml" >"$T/source"
check "swarm: enclave stage on SGX nodes" grep -q '"node.labels.sgx == true"' "$T/mapper"
check "swarm: enclave stage gets the SGX devices" grep -q '/dev/sgx_enclave' "$T/mapper"
check "swarm: other stages unconstrained" sh -c "! grep -q 'constraints' '$T/filter'"
check "swarm: the source on the data node" grep -q '"node.labels.securestreams.data == true"' "$T/source"
check "swarm: routers resolve to their task (dnsrr)" grep -q 'endpoint_mode: dnsrr' "$T/router2"
check "swarm: the key is a secret, mode 0400" sh -c "grep -A2 'source: data_key_' '$T/filter' | grep -q 'mode: 0400'"
check "swarm: the secret is named by the key id" grep -q "^  data_key_[0-9a-f]\{16\}:" "$T/s1.yml"
check "swarm: scripts are configs" grep -q '^  mapper_lua_[0-9a-f]\{8\}:$' "$T/s1.yml"
check "swarm: overlay network, attachable" sh -c "grep -A2 '^  pipeline:' '$T/s1.yml' | grep -q 'driver: overlay'"
check "swarm: routers are never restarted" grep -q 'restart_policy: {condition: none}' "$T/router2"
if command -v docker >/dev/null 2>&1 && (cd "$T/out" && timeout 60 docker stack config -c /dev/stdin) <"$T/s1.yml" >"$T/snorm.yml" 2>"$T/serr"; then
    ok "swarm: docker stack config accepts the file"
    check "swarm: config mode 0444" grep -q 'mode: 292' "$T/snorm.yml"
elif command -v docker >/dev/null 2>&1 && grep -q "unknown command\|is not a docker command" "$T/serr"; then
    ok "swarm: docker stack config not checked: this docker has no 'stack config'"
elif command -v docker >/dev/null 2>&1; then
    notok "swarm: docker stack config accepts the file" "$(tail -3 "$T/serr")"
else
    ok "swarm: docker stack config not checked: docker is not installed"
fi

# A changed script is a new config name; an unchanged one keeps its name.
echo "-- changed" >>"$P/filter.lua"
deploy "$SPEC" --format swarm --key ../keys/data.key --enclave-backend sgx
check "swarm: a changed script gets a new config" sh -c "! grep -q \"\$(grep -o 'filter_lua_[0-9a-f]*' '$T/s1.yml' | head -1)\" '$T/out.yml'"
check "swarm: an unchanged script keeps its config" grep -q "$(grep -o 'mapper_lua_[0-9a-f]*' "$T/s1.yml" | head -1)" "$T/out.yml"

# CurveZMQ: routers get the router key and the client allow-list; the others
# the client key and the router's public key.
mkdir -p "$T/curve"
"$SS" keygen --curve -o "$T/curve/router" >/dev/null 2>&1
"$SS" keygen --curve -o "$T/curve/client" >/dev/null 2>&1
deploy "$SPEC" --format compose --key ../keys/data.key --curve ../curve
service router0 "$T/out.yml" >"$T/router0"
service sink "$T/out.yml" >"$T/sink"
check "curve: routers get SS_CURVE_ROUTER_KEY" grep -q 'SS_CURVE_ROUTER_KEY: "/run/secrets/curve-router"' "$T/router0"
check "curve: routers get the client allow-list" grep -q '"../curve/client.pub:/run/secrets/curve-client.pub:ro"' "$T/router0"
check "curve: components get SS_CURVE_KEY and SS_CURVE_SERVER" sh -c "grep -q 'SS_CURVE_KEY' '$T/sink' && grep -q 'SS_CURVE_SERVER' '$T/sink'"
check "curve: components never get the router's secret" sh -c "! grep -q 'curve/router:' '$T/sink'"
deploy "$SPEC" --format swarm --key ../keys/data.key --curve ../curve
check "curve swarm: secret keys are secrets" sh -c "grep -q '^  curve_router_[0-9a-f]*:' '$T/out.yml' && grep -q '^  curve_client_[0-9a-f]*:' '$T/out.yml'"

# A sealed input is sealed again into the run by the source: the pipeline's
# stream id, not the one its records carry.
SS_STREAM=0x1234abcd "$SS" encrypt -k "$T/keys/data.key" "$F" "$P/flights.sealed" 2>/dev/null
deploy "$SPEC" --format compose --key ../keys/data.key --input "$P/flights.sealed"
check "sealed input: the pipeline's stream id" test "$(stream_of "$T/out.yml")" = "$(stream_of "$T/c1.yml")"

# Plain mode: no key anywhere; an enclave stage is refused as by run.
deploy "$ROOT/examples/flights/flights.spec.lua" --format compose --input "$F" --workers 4
check "plain: exit 0" test "$RC" -eq 0
check "plain: no key" sh -c "! grep -q 'SS_KEY_FILE\|secrets' '$T/out.yml'"
check "plain: --workers 4 gives 4 replicas" test "$(grep -c 'replicas: 4' "$T/out.yml")" -eq 3

# Fused stages (fuse = true in the spec, or --fuse) deploy as `run --fuse`
# runs them: one worker service running every script in turn, no router
# between the stages.
sed 's/^  on_error = "skip",$/  on_error = "skip",\n  fuse = true,/' "$SPEC" >"$P/fused.spec.lua"
deploy "$P/fused.spec.lua" --format compose --key ../keys/data.key --run $RUN
check "fused: exit 0" test "$RC" -eq 0
cp "$T/out.yml" "$T/f1.yml"
check "fused: five services (two routers, one stage, source, sink)" \
    test "$(grep -c '^  [a-z0-9_-]*:$' "$T/f1.yml")" -eq 5
check "fused: one stage service, named after its stages" grep -q '^  mapper-filter-reducer:$' "$T/f1.yml"
check "fused: no service per stage" sh -c "! grep -qE '^  (mapper|filter|reducer):\$' '$T/f1.yml'"
check "fused: no inner routers" sh -c "grep -q '^  router1:\$' '$T/f1.yml' && ! grep -q '^  router2:\$' '$T/f1.yml'"
if command -v docker-compose >/dev/null 2>&1; then
    cp "$T/f1.yml" "$T/out/fused.yml"
    check "fused: docker-compose config accepts the file" \
        sh -c "cd '$T/out' && timeout 60 docker-compose -f fused.yml config >/dev/null 2>&1"
    rm -f "$T/out/fused.yml"
fi
service mapper-filter-reducer "$T/f1.yml" >"$T/fused"
check "fused: the workers go from router0 to router1" grep -q '"tcp://router0:5556", "--to", "tcp://router1:5555"' "$T/fused"
check "fused: each worker runs the three scripts in order" test \
    "$(grep -o '/pipeline/[a-z]*\.lua' "$T/fused" | tr '\n' ' ')" = "/pipeline/mapper.lua /pipeline/filter.lua /pipeline/reducer.lua "
check "fused: the stage as run --fuse names it" grep -q '"--stage", "mapper+filter+reducer"' "$T/fused"
check "fused: replicas = the largest count" grep -q 'replicas: 3' "$T/fused"
check "fused: the sink reads router1" grep -q '"sink", "--from", "tcp://router1:5556"' "$T/f1.yml"
deploy "$SPEC" --format compose --key ../keys/data.key --fuse --run $RUN
# The same file but for the spec's name in the header.
grep -v '^# `securestreams deploy ' "$T/out.yml" >"$T/f2.body"
grep -v '^# `securestreams deploy ' "$T/f1.yml" >"$T/f1.body"
check "fused: --fuse writes what fuse = true does" cmp -s "$T/f1.body" "$T/f2.body"
deploy "$P/fused.spec.lua" --format swarm --key ../keys/data.key
service mapper-filter-reducer "$T/out.yml" >"$T/fused"
check "fused swarm: the stage gets every script as a config" \
    test "$(grep -c 'source: [a-z]*_lua_[0-9a-f]*$' "$T/fused")" -eq 3

# Errors: each names the cause; usage errors exit 2, unreadable files 1.
deploy "$SPEC" --format kubernetes --key ../keys/data.key
check "error: unknown format exits 2" test "$RC" -eq 2
deploy "$SPEC" --key ../keys/data.key
check "error: no format exits 2" test "$RC" -eq 2
deploy "$SPEC" --format compose
check "error: encrypted without a key exits 2" sh -c "test $RC -eq 2 && grep -q 'needs a data key' '$T/err'"
cp "$T/keys/data.key" "$T/keys/open.key"
chmod 644 "$T/keys/open.key"
deploy "$SPEC" --format compose --key ../keys/open.key
check "error: a key readable by others is refused" sh -c "test $RC -ne 0 && grep -q 'chmod 600' '$T/err'"
deploy "$SPEC" --format compose --key ../keys/data.key --input "$T/nonexistent.csv"
check "error: a missing input exits 1" sh -c "test $RC -eq 1 && grep -q 'nonexistent.csv' '$T/err'"
deploy "$ROOT/examples/flights/flights.spec.lua" --format compose --input "$F" --security encrypted \
    --key ../keys/data.key --enclave-backend sgxx
check "error: unknown enclave backend exits 2" test "$RC" -eq 2
sed 's/"mapper.lua"/"..\/elsewhere.lua"/' "$SPEC" >"$P/outside.spec.lua"
cp "$P/mapper.lua" "$T/elsewhere.lua"
deploy "$P/outside.spec.lua" --format compose --key ../keys/data.key
check "error: a script outside the spec's directory is refused" sh -c "test $RC -eq 2 && grep -q 'outside the spec' '$T/err'"
sed 's/name = "filter"/name = "my.filter"/' "$SPEC" >"$P/badname.spec.lua"
deploy "$P/badname.spec.lua" --format compose --key ../keys/data.key
check "error: a stage name that cannot name a service is refused" sh -c "test $RC -eq 2 && grep -q 'cannot name a service' '$T/err'"
sed 's/security = "encrypted"/security = "plain"/' "$SPEC" >"$P/plainenc.spec.lua"
deploy "$P/plainenc.spec.lua" --format compose
check "error: an enclave stage in the plain mode is refused" sh -c "test $RC -eq 2 && grep -q 'enclave' '$T/err'"
"$SS" deploy --help >"$T/help" 2>&1
check "deploy --help exits 0 and names both formats" grep -q 'compose|swarm' "$T/help"
check "securestreams --help lists deploy" sh -c "'$SS' --help | grep -q '^  deploy'"
