#!/usr/bin/env bash
# allocs-per-tunnel.sh: the relay's heap allocations per tunnel on the
# set-up path (docs/BENCHMARKS.md, "Allocations per tunnel"). Counted, not
# timed.
#
# A relay (`meetpoint serve --auth dummy`, no per-address limits, its admin
# listener on loopback) serves `bench setup --conc 64` over TRANSPORT (tcp
# or ws) for SECONDS. The Go runtime's counters, read from /metrics before
# and after, divided by the tunnels the relay counted, give heap objects
# and bytes per tunnel and GC cycles per 1,000 tunnels; the bench's own
# row (relay CPU per tunnel among its columns) is printed beside them.
#
# Usage: scripts/allocs-per-tunnel.sh [tcp|ws] [seconds]   (BIN: the binary)
set -eu
transport=${1:-tcp}
secs=${2:-3}
bin=${BIN:-bin/meetpoint}
out=$(mktemp -d)
pid=
trap 'kill ${pid:-} 2>/dev/null || true; rm -rf "$out"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rp=$(port)
ap=$(port)
"$bin" serve --listen "127.0.0.1:$rp" --admin-listen "127.0.0.1:$ap" --conn-rate-per-ip 0 \
	--max-conns-per-ip 0 --auth dummy --log-level error >"$out/relay.log" 2>&1 &
pid=$!
i=0
until curl -sf "http://127.0.0.1:$ap/metrics" >/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "relay did not start:" >&2; cat "$out/relay.log" >&2; exit 1; }
	sleep 0.1
done
# scrape: "mallocs bytes gcs tunnels" from the relay's /metrics.
scrape() {
	curl -sf "http://127.0.0.1:$ap/metrics" | awk '
		$1 == "go_memstats_mallocs_total" { m = $2 }
		$1 == "go_memstats_alloc_bytes_total" { b = $2 }
		$1 == "go_gc_duration_seconds_count" { g = $2 }
		$1 == "meetpoint_tunnels_total" { t = $2 }
		END { printf "%.0f %.0f %.0f %.0f\n", m, b, g, t }'
}
url="tcp://127.0.0.1:$rp"
[ "$transport" = ws ] && url="ws://127.0.0.1:$rp/"
before=$(scrape)
"$bin" bench setup --relay-url "$url" --relay-pid "$pid" --peers meetpoint --transports "$transport" \
	--conc 64 --duration "${secs}s" --out "$out/res" >"$out/bench.txt" 2>&1
after=$(scrape)
read -r m0 b0 g0 t0 <<<"$before"
read -r m1 b1 g1 t1 <<<"$after"
n=$((t1 - t0))
[ "$n" -gt 0 ] || { echo "no tunnels measured:" >&2; cat "$out/bench.txt" >&2; exit 1; }
grep -E '^\| (peer|meetpoint)' "$out/bench.txt" | head -2
awk -v n="$n" -v m=$((m1 - m0)) -v b=$((b1 - b0)) -v g=$((g1 - g0)) -v tr="$transport" 'BEGIN {
	printf "# %s: %d tunnels; relay heap objects per tunnel %.1f, bytes per tunnel %.0f, GC cycles per 1,000 tunnels %.2f\n",
		tr, n, m / n, b / n, 1000 * g / n }'
