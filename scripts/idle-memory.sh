#!/usr/bin/env bash
# Relay memory per idle tunnel, plaintext or TLS, fresh or after a burst:
# docs/BENCHMARKS.md "Idle TLS tunnels on the own record layer".
#
# For each "TLS N BURST" argument (TLS 0 or 1; N tunnels; BURST bytes sent
# each way through every tunnel before it idles, 0 for none) a fresh relay
# (bin/meetpoint serve) holds N tunnels of the relay test binary's client
# fleet (MEETPOINT_TEST_CLIENTS, in its own process). It prints the relay's
# RSS 3 s and 25 s after the last pairing (past the idle-key sweep), then
# forces a GC through the admin listener and prints the live heap and the
# RSS 60 s later. The per-tunnel cost is the slope between two N.
#
# Usage: scripts/idle-memory.sh "1 2000 65536" "1 6000 65536" ...
#   (needs bin/meetpoint: make build; and curl)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-19443} admin=${ADMIN:-19444}
test -x bin/meetpoint || { echo "idle-memory: make build first" >&2; exit 1; }
go test -c -o /tmp/meetpoint-relay.test ./relay
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

measure() { # tls n burst
	local tlsflag=() tlsenv=""
	[ "$1" = 1 ] && tlsflag=(--tls) tlsenv=1
	bin/meetpoint serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --log-level warn \
		--inactive-timeout 5m --alone-timeout 5m "${tlsflag[@]}" >"$work/relay.log" 2>&1 &
	local relay=$!
	for _ in $(seq 50); do curl -s "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.2; done
	mkfifo "$work/hold"
	MEETPOINT_TEST_CLIENTS="127.0.0.1:$port $2 0 0" MEETPOINT_TEST_CLIENTS_TLS=$tlsenv \
		MEETPOINT_TEST_CLIENTS_BURST=$3 /tmp/meetpoint-relay.test <"$work/hold" >"$work/clients" 2>&1 &
	local clients=$!
	exec 7>"$work/hold"
	for _ in $(seq 600); do grep -q "ready\|error" "$work/clients" && break; sleep 0.5; done
	local t0=$SECONDS line="tls=$1 tunnels=$2 burst=$3 $(head -1 "$work/clients")"
	for at in 3 25; do
		while [ $((SECONDS - t0)) -lt $at ]; do sleep 1; done
		line="$line rss@${at}s=$(rss $relay)KiB"
	done
	curl -s -o /dev/null "http://127.0.0.1:$admin/debug/pprof/heap?gc=1"
	line="$line live_heap=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^go_memstats_heap_alloc_bytes/{printf "%d", $2/1024}')KiB"
	sleep 60
	echo "$line rss@gc+60s=$(rss $relay)KiB"
	exec 7>&-
	wait $clients || true
	kill $relay; wait $relay 2>/dev/null || true
	rm -f "$work/hold"
}

for spec in "$@"; do
	# shellcheck disable=SC2086
	measure $spec
done
