#!/usr/bin/env bash
# bench-external.sh: benchmark a `meetpoint serve` process (the real binary,
# its real flags) instead of the harness's own relay.
#
#   scripts/bench-external.sh [SCENARIO] [bench flags...]
#
# It builds bin/meetpoint, starts `meetpoint serve --auth dummy` on a free
# loopback port with per-address limits off, runs
# `meetpoint bench SCENARIO --relay-url tcp://... --relay-pid PID --out results`
# and stops the relay. SCENARIO defaults to quick.
set -eu
cd "$(dirname "$0")/.."
scenario=${1:-quick}
[ $# -gt 0 ] && shift
go build -o bin/meetpoint ./cmd/meetpoint
port=${BENCH_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18443)}
./bin/meetpoint serve --listen 127.0.0.1:$port --listen 127.0.0.2:$port \
	--listen 127.0.0.3:$port --listen 127.0.0.4:$port --auth dummy \
	--max-conns-per-ip 0 --conn-rate-per-ip 0 --alone-timeout 30s \
	--inactive-timeout 30s --log-level error &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT INT TERM
i=0
until (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do
	kill -0 $pid 2>/dev/null || { echo "relay exited (port $port taken? set BENCH_PORT)" >&2; exit 1; }
	i=$((i + 1))
	[ $i -gt 50 ] && { echo "relay did not start" >&2; exit 1; }
	sleep 0.1
done
kill -0 $pid 2>/dev/null || { echo "relay exited (port $port taken? set BENCH_PORT)" >&2; exit 1; }
urls=tcp://127.0.0.1:$port,tcp://127.0.0.2:$port,tcp://127.0.0.3:$port,tcp://127.0.0.4:$port
./bin/meetpoint bench "$scenario" --relay-url "$urls" --relay-pid $pid --out results "$@"
