#!/usr/bin/env bash
# setup-floor.sh: issue 28's figures, each beside its goal, from one run of
# the bench harness (docs/BENCHMARKS.md, "Set-up floor"). Measured, not
# asserted: it prints the table and keeps every run's results.
#
# RUNS times (default 3; the table gives the median and every run):
#   bench setup       HAProxy and meetpoint (tcp, ws), relay in its own
#                     process: relay CPU per tunnel, set-up rate
#   bench latency     direct, HAProxy, meetpoint tcp, 20,000 samples: the
#                     64 B RTT p99 each adds over a direct connection
#   bench throughput  one WebSocket tunnel, 64 KiB TEXT against BINARY
#                     messages: MB/s and relay CPU per MB
# then once: scripts/syscalls-per-tunnel.sh tcp and ws (strace).
#
# Not here (minutes each; docs/BENCHMARKS.md has their commands): idle TLS
# memory (scripts/idle-memory.sh) and TLS writes per 64 KiB (strace).
#
# Arguments go to every bench command: on a host with cores to spare,
# e.g. --client-cpus 0-7 --peer-cpus 8-9, so that the forwarders' figures
# are their own and not the queue for shared CPUs.
#
# Usage: scripts/setup-floor.sh [bench flags...]   (make floor; needs
#   haproxy, strace, python3; OUT=dir for the results, default
#   results/floor-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
out=${OUT:-results/floor-$(date -u +%Y%m%d-%H%M%S)}
for c in haproxy strace python3; do
	command -v "$c" >/dev/null || { echo "setup-floor: $c is not installed" >&2; exit 1; }
done
test -x bin/meetpoint || { echo "setup-floor: make build first" >&2; exit 1; }
mkdir -p "$out"

for i in $(seq "$runs"); do
	echo "== run $i of $runs" >&2
	bin/meetpoint bench setup --peers haproxy,meetpoint --transports tcp,ws --duration 3s --conc 64 \
		--spawn-relay --out "$out/setup" "$@" >"$out/setup-$i.txt"
	bin/meetpoint bench latency --peers direct,haproxy,meetpoint --transports tcp --background 0 \
		--samples 20000 --spawn-relay --out "$out/latency" "$@" >"$out/latency-$i.txt"
	bin/meetpoint bench throughput --peers meetpoint --transports ws,wsbin --sizes 65536 --parallel 1 \
		--duration 3s --spawn-relay --out "$out/throughput" "$@" >"$out/throughput-$i.txt"
done
echo "== system calls per tunnel" >&2
scripts/syscalls-per-tunnel.sh tcp >"$out/syscalls-tcp.txt"
scripts/syscalls-per-tunnel.sh ws >"$out/syscalls-ws.txt"

python3 - "$out" "$runs" <<'EOF'
import glob, json, statistics, sys

out, runs = sys.argv[1], int(sys.argv[2])

def tables(kind):
    """Every run's rows of one bench kind, in run order."""
    res = []
    for f in sorted(glob.glob(f"{out}/{kind}/*/results.json")):
        rows = [r for t in json.load(open(f))["tables"] for r in t["rows"]]
        res.append(rows)
    if len(res) != runs:
        sys.exit(f"setup-floor: {len(res)} {kind} results in {out}/{kind}, want {runs}")
    return res

def row(rows, peer, **params):
    for r in rows:
        if r["peer"] == peer and all(r.get("params", {}).get(k) == v for k, v in params.items()):
            return r["values"]
    sys.exit(f"setup-floor: no row {peer} {params}")

def med(xs):
    return statistics.median(xs)

def fmt(xs, f="{:.0f}"):
    return f.format(med(xs)) + " (" + ", ".join(f.format(x) for x in xs) + ")"

IO = {"read", "write", "readv", "writev", "accept4", "accept", "close", "shutdown", "splice",
      "epoll_ctl", "setsockopt", "getsockopt", "fcntl", "recvfrom", "sendto", "recvmsg", "sendmsg"}

def io_calls(path):
    n, parts = 0.0, []
    for line in open(path):
        f = line.split()
        if len(f) >= 2 and f[0] in IO:
            n += float(f[1])
            parts.append(f"{f[0]} {f[1]}")
    return n, ", ".join(parts)

setup = tables("setup")
hap = [row(r, "haproxy")["cpu"] for r in setup]
tcp = [row(r, "meetpoint tcp")["cpu"] for r in setup]
ws = [row(r, "meetpoint ws")["cpu"] for r in setup]
rate = [row(r, "meetpoint tcp")["rate"] / row(r, "haproxy")["rate"] for r in setup]
xtcp = [t / h for t, h in zip(tcp, hap)]

lat = tables("latency")
added, noref = [], 0
for rows in lat:
    for r in rows:
        if r["peer"] == "meetpoint tcp":
            h = row(rows, "haproxy", **r.get("params", {}))
            if h["added_p99"] > 0:
                added.append(r["values"]["added_p99"] / h["added_p99"])
            else:  # HAProxy's p99 at or under direct's (a noisy row): no ratio, not a negative one that reads "met"
                noref += 1

thr = tables("throughput")
speed = [row(r, "meetpoint ws")["mbps"] / row(r, "meetpoint wsbin")["mbps"] for r in thr]
cpu = [row(r, "meetpoint ws")["cpu"] / row(r, "meetpoint wsbin")["cpu"] for r in thr]

sc_tcp, parts_tcp = io_calls(f"{out}/syscalls-tcp.txt")
sc_ws, parts_ws = io_calls(f"{out}/syscalls-ws.txt")

def met(ok):
    return "yes" if ok else "no"

print(f"Issue 28's figures, {runs} runs (median, then each run); results in {out}\n")
print("| figure | measured | goal | met |")
print("|---|---|---|---|")
print(f"| relay CPU per TCP tunnel | {fmt(tcp)} µs; HAProxy's per connection {fmt(hap)} µs; × HAProxy {fmt(xtcp, '{:.2f}')} "
      f"| ≤ 120 µs, and ≤ HAProxy's | {met(med(tcp) <= 120 and med(xtcp) <= 1)} |")
print(f"| relay CPU per WebSocket tunnel | {fmt(ws)} µs | ≤ 150 µs | {met(med(ws) <= 150)} |")
print(f"| I/O system calls per TCP tunnel | {sc_tcp:.1f}: {parts_tcp} | ≤ 18 | {met(sc_tcp <= 18)} |")
print(f"| I/O system calls per WebSocket tunnel | {sc_ws:.1f}: {parts_ws} | ≤ 24 | {met(sc_ws <= 24)} |")
print(f"| set-up rate, TCP, × HAProxy | {fmt(rate, '{:.2f}')} | ≥ 1.0 | {met(med(rate) >= 1)} |")
print(f"| WebSocket TEXT ÷ BINARY throughput, one tunnel | {fmt(speed, '{:.2f}')} | ≥ 0.95 | {met(med(speed) >= 0.95)} |")
print(f"| relay CPU per byte, TEXT ÷ BINARY | {fmt(cpu, '{:.2f}')} | ≤ 1.1 | {met(med(cpu) <= 1.1)} |")
skipped = f" ({noref} rows without a ratio: HAProxy added nothing over direct there)" if noref else ""
if added:
    print(f"| 64 B RTT p99 added over direct, × HAProxy's (idle and busy rows) | {fmt(added, '{:.2f}')}{skipped} | ≤ 0.8 | {met(med(added) <= 0.8)} |")
else:
    print(f"| 64 B RTT p99 added over direct, × HAProxy's (idle and busy rows) | no ratio{skipped} | ≤ 0.8 | – |")
print("| idle TLS tunnel memory; TLS writes per 64 KiB | not measured here: scripts/idle-memory.sh, and strace (docs/BENCHMARKS.md) | ≤ 8 KiB; ≤ 1.25 | – |")
EOF
