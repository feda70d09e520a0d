#!/usr/bin/env bash
# syscalls-per-tunnel.sh: the relay's system calls per tunnel on the set-up
# path (docs/BENCHMARKS.md, "Syscalls per tunnel"). Counted, not timed.
#
# A relay (`meetpoint serve`, default log level) runs under `strace -c -f`
# twice: once while `bench setup --conc 1` opens tunnels one after the other
# over TRANSPORT (tcp or ws: both ends connect, Authenticate, wait for
# TunnelEstablished, close), and once idle for as long. The table is
# (busy − idle) / tunnels, per system call, all relay threads.
#
# Usage: scripts/syscalls-per-tunnel.sh [tcp|ws] [seconds]   (needs strace)
set -eu
transport=${1:-tcp}
secs=${2:-3}
bin=${BIN:-bin/meetpoint}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
command -v strace >/dev/null || { echo "syscalls-per-tunnel: strace is not installed (apt-get install strace)" >&2; exit 1; }

# count FILE: strace's summary as "name calls errors" lines.
count() {
	awk '$1 ~ /^[0-9.]+$/ && NF >= 5 { print $NF, $4, (NF >= 6 ? $5 : 0) }' "$1"
}

# serve NAME CMD...: a relay under strace on a free port while CMD runs
# ($addr in CMD is its address).
serve() {
	name=$1
	shift
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	addr=127.0.0.1:$port
	strace -f -c -o "$out/$name.strace" "$bin" serve --listen "$addr" --conn-rate-per-ip 0 \
		>"$out/$name.log" 2>&1 &
	pid=$!
	i=0
	until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "relay did not start:" >&2; cat "$out/$name.log" >&2; exit 1; }
		sleep 0.1
	done
	eval "$@"
	pkill -INT -P "$pid" # the relay: strace itself ignores SIGINT while it runs a program
	wait "$pid" || true
}

url="tcp://\$addr"
[ "$transport" = ws ] && url="ws://\$addr/"
serve busy "$bin" bench setup --relay-url "$url" --peers meetpoint --transports "$transport" \
	--conc 1 --duration "${secs}s" --out "$out/res" '>' "$out/bench.txt"
serve idle sleep "$secs"
n=$(python3 -c 'import glob, json, sys
d = json.load(open(glob.glob(sys.argv[1] + "/*/results.json")[0]))
print(sum(r["values"].get("tunnels", 0) for t in d["tables"] for r in t["rows"] if r["peer"].startswith("meetpoint")))' "$out/res")
[ "$n" -gt 0 ] || { echo "no tunnels measured:" >&2; cat "$out/bench.txt" >&2; exit 1; }
count "$out/busy.strace" | sort >"$out/busy"
count "$out/idle.strace" | sort >"$out/idle"
echo "# $transport: $n tunnels (one at a time), relay syscalls per tunnel, busy − idle (failed calls)"
join -a1 -e 0 -o 0,1.2,1.3,2.2,2.3 "$out/busy" "$out/idle" |
	awk -v n="$n" '{ d = ($2 - $4) / n; e = ($3 - $5) / n
		if (d >= 0.05) printf "%-16s %6.1f (%.1f)\n", $1, d, (e > 0 ? e : 0) }' | sort -k2 -rn
