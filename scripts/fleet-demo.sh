#!/usr/bin/env bash
# fleet-demo: redis-server, three meetpoint nodes and HAProxy in TCP mode
# (round-robin) in front of them, then two `meetpoint client`s that pair
# through the balancer — on different nodes, whatever HAProxy chose — and
# exchange a line each way, then end (about 5 seconds, progress on the
# way). Everything on loopback, in a temporary directory, stopped on exit. Needs redis-server and haproxy
# (apt-get install redis-server haproxy); builds bin/meetpoint if missing.
#
#   scripts/fleet-demo.sh          # or: make fleet-demo
#   KEEP=1 scripts/fleet-demo.sh   # leave the fleet running (Ctrl-C stops it)
set -euo pipefail
cd "$(dirname "$0")/.."

for bin in redis-server haproxy; do
  command -v "$bin" >/dev/null || { echo "fleet-demo: $bin is missing (apt-get install redis-server haproxy)" >&2; exit 1; }
done
[ -x bin/meetpoint ] || make build >/dev/null
MP=$PWD/bin/meetpoint
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait until 127.0.0.1:$1 accepts
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "fleet-demo: nothing listens on port $1 (logs in $dir)" >&2; exit 1
}

start=$(date +%s)
step() { echo "fleet-demo [$(($(date +%s) - start))s]: $*"; }

step "starting redis-server"
REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)
wait_port "$REDIS"
"$MP" token --gen-key "$dir/mesh.key" >/dev/null 2>&1 || { echo "fleet-demo: meetpoint token --gen-key failed" >&2; exit 1; }

step "starting three meetpoint nodes on it"
PORTS=()
ADMIN=()
for n in a b c; do
  p=$(free_port)
  PORTS+=("$p")
  ap=$(free_port)
  ADMIN+=("$ap")
  "$MP" serve --listen 127.0.0.1:"$p" --fleet redis://127.0.0.1:"$REDIS"/0 --node-id relay-"$n" \
    --advertise 127.0.0.1:"$p" --mesh-key-file "$dir/mesh.key" --admin-listen 127.0.0.1:"$ap" >"$dir/relay-$n.log" 2>&1 &
  pids+=($!)
done
for p in "${PORTS[@]}"; do wait_port "$p"; done

step "starting HAProxy (TCP, round-robin) in front of them"
LB=$(free_port)
cat >"$dir/haproxy.cfg" <<CFG
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  timeout client 1m
  timeout server 1m
frontend relay
  bind 127.0.0.1:$LB
  default_backend nodes
backend nodes
  balance roundrobin
  server a 127.0.0.1:${PORTS[0]} check
  server b 127.0.0.1:${PORTS[1]} check
  server c 127.0.0.1:${PORTS[2]} check
CFG
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$LB"
sleep 0.3 # the nodes see each other after a heartbeat

echo "fleet: redis 127.0.0.1:$REDIS, nodes on ${PORTS[*]}, HAProxy round-robin on 127.0.0.1:$LB"
token=demo-$RANDOM$RANDOM
# Each client says its line once paired and closes the tunnel when its
# input ends (--close-on-eof); without that both would wait for the other
# to close, until HAProxy's idle timeout cut them a minute later.
step "alice (raw TCP) and bob (WebSocket) connect through HAProxy with one token"
( sleep 1; echo "hello from alice"; sleep 2 ) | "$MP" client --url tcp://127.0.0.1:"$LB" --token "$token" --name alice --close-on-eof >"$dir/out-a" 2>"$dir/err-a" &
pa=$!
sleep 0.3
( sleep 1; echo "hello from bob"; sleep 2 ) | "$MP" client --url ws://127.0.0.1:"$LB"/ --token "$token" --name bob --close-on-eof >"$dir/out-b" 2>"$dir/err-b" &
pb=$!
( sleep 20; kill "$pa" "$pb" 2>/dev/null ) & # never longer than this
watchdog=$!
wait "$pa" "$pb" || true
kill "$watchdog" 2>/dev/null || true
step "both clients ended"

ok=1
grep -q "hello from bob" "$dir/out-a" || ok=0
grep -q "hello from alice" "$dir/out-b" || ok=0
echo "alice (raw TCP) received: $(cat "$dir/out-a")"
echo "bob (WebSocket) received: $(cat "$dir/out-b")"
# Where did the pair meet? Each node's /metrics (on its admin listener)
# counts the tunnels that crossed to another node.
cross=""
i=0
for n in a b c; do
  c=$(python3 -c 'import sys,urllib.request; print(sum(float(l.split()[-1]) for l in urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().splitlines() if l.startswith("meetpoint_cross_node_pairs_total")))' \
    "http://127.0.0.1:${ADMIN[$i]}/metrics" 2>/dev/null || echo 0)
  [ "${c%.*}" != 0 ] && cross+="relay-$n "
  i=$((i + 1))
done
if [ -n "$cross" ]; then
  echo "the pair crossed nodes: cross-node tunnels counted on ${cross% }"
else
  echo "both clients landed on one node (HAProxy's choice); they paired there"
fi
if [ "$ok" = 1 ]; then
  echo "fleet-demo: OK — two clients paired through HAProxy in front of three nodes"
else
  echo "fleet-demo: FAILED; client errors:" >&2
  cat "$dir/err-a" "$dir/err-b" >&2
  tail -n 20 "$dir"/relay-*.log >&2
  exit 1
fi
if [ -n "${KEEP:-}" ]; then
  echo "KEEP=1: fleet running (logs in $dir); Ctrl-C stops it"
  wait
fi
