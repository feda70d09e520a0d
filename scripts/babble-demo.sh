#!/usr/bin/env bash
# make babble-demo: two real Babble nodes reach consensus through meetpoint,
# which is both their signalling server (WAMP) and their TURN server.
#
#   1. builds Babble's cmd/babble and cmd/dummy (v0.8.0, from the Go module
#      proxy, at the versions interop/disco/go.sum pins) and bin/meetpoint;
#   2. makes three network namespaces: a relay joined by a veth pair to each
#      of two nodes, in two subnets, with forwarding off — a node reaches
#      the relay and nothing else, so WebRTC can only go through TURN (and
#      meetpoint's peer policy refuses the nodes' private addresses too);
#   3. runs `meetpoint serve --tls --turn --turn-user …` in the relay's
#      namespace and in each node's `babble run --webrtc` (its babble.toml
#      names meetpoint as its only ICE server, with the static user) and
#      Babble's dummy client, which submits transactions typed on stdin;
#   4. submits transactions on both nodes and waits until both have
#      committed all of them: it prints each node's committed transactions
#      and passes when they are the same, in the same order, and meetpoint
#      says it relayed the bytes.
#
# Needs root (ip netns), ip(8), openssl, curl, python3. KEEP=1 leaves the
# directory with the logs. Under a minute once Babble is built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "babble-demo: needs root (network namespaces)" >&2; exit 2; }
for bin in ip openssl curl python3; do
	command -v "$bin" >/dev/null || { echo "babble-demo: $bin is missing" >&2; exit 2; }
done

dir=$(mktemp -d)
id=$$
R=mpb-relay-$id N1=mpb-n1-$id N2=mpb-n2-$id
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for ns in "$R" "$N1" "$N2"; do ip netns del "$ns" 2>/dev/null || true; done
	if [ -n "${KEEP:-}" ]; then echo "babble-demo: logs in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT INT TERM

echo "babble-demo: building Babble (cmd/babble, cmd/dummy) and meetpoint"
make build >/dev/null
(cd interop/disco && go build -o "$dir/" github.com/mosaicnetworks/babble/cmd/babble github.com/mosaicnetworks/babble/cmd/dummy)

# The relay: 10.77.1.1 toward node 1, 10.77.2.1 toward node 2; no forwarding.
for ns in "$R" "$N1" "$N2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=0
for n in 1 2; do
	ns=$N1
	[ "$n" = 2 ] && ns=$N2
	ip link add "mpbr$n-$id" netns "$R" type veth peer name "mpbn$n-$id" netns "$ns"
	ip -n "$R" addr add "10.77.$n.1/24" dev "mpbr$n-$id"
	ip -n "$R" link set "mpbr$n-$id" up
	ip -n "$ns" addr add "10.77.$n.2/24" dev "mpbn$n-$id"
	ip -n "$ns" link set "mpbn$n-$id" up
	ip -n "$ns" route add default via "10.77.$n.1"
done

RELAY=10.77.1.1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=relay \
	-addext "subjectAltName=DNS:relay,IP:$RELAY" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
printf 'babble-demo-ice-password\n' >"$dir/ice-password"
ip netns exec "$R" "$repo/bin/meetpoint" serve --listen 0.0.0.0:8443 --auth dummy --tls \
	--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --turn --turn-relay-ip "$RELAY" \
	--turn-user babble --turn-password-file "$dir/ice-password" >"$dir/meetpoint.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	ip netns exec "$R" curl -sk "https://$RELAY:8443/healthz" >/dev/null 2>&1 && break
	sleep 0.1
done

committed() { # committed transactions of node $1, one a line, in order
	local ns=$N1
	[ "$1" = 2 ] && ns=$N2
	ip netns exec "$ns" curl -s -m 2 "http://127.0.0.1:8000/blocks/0?count=1000" 2>/dev/null | python3 -c '
import base64, json, sys
try:
    blocks = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for b in blocks:
    for tx in b["Body"]["Transactions"] or []:
        print(base64.b64decode(tx).decode())'
}

# nodes TRY: two fresh nodes (keys, babble.toml naming meetpoint's TURN
# server and static user, the relay's certificate to trust, the peers)
# and their dummy clients; five transactions typed on each; waits up to a
# minute for both to commit all ten. Its processes are in node_pids.
node_pids=()
nodes() {
	local d=$dir/try$1 n ns fd
	for n in 1 2; do
		mkdir -p "$d/n$n"
		"$dir/babble" keygen --priv "$d/n$n/priv_key" --pub "$d/n$n/key.pub" >/dev/null
		cp "$dir/cert.pem" "$d/n$n/cert.pem"
		cat >"$d/n$n/babble.toml" <<TOML
signal-realm = "main"
[[iceservers]]
urls = ["turn:$RELAY:8443"]
username = "babble"
credential = "babble-demo-ice-password"
TOML
	done
	python3 - "$d" <<'PY'
import json, sys
d = sys.argv[1]
peers = [{"NetAddr": k, "PubKeyHex": k, "Moniker": "node%d" % n}
         for n in (1, 2) for k in [open("%s/n%d/key.pub" % (d, n)).read().strip()]]
for n in (1, 2):
    json.dump(peers, open("%s/n%d/peers.json" % (d, n), "w"))
PY
	for n in 1 2; do
		ns=$N1
		[ "$n" = 2 ] && ns=$N2
		# GOMAXPROCS=1: Babble's pion/turn v2 client loses a TURN reply that
		# comes before it waits for it, and a node whose offer handling hangs
		# on that answers no peer again; on one processor that race is rare
		# (docs/discovery.md).
		GOMAXPROCS=1 ip netns exec "$ns" "$dir/babble" run --datadir "$d/n$n" --webrtc --signal-addr "$RELAY:8443" \
			--moniker "node$n" --heartbeat 200ms --timeout 10s --log info -p 127.0.0.1:1338 -c 127.0.0.1:1339 -s 127.0.0.1:8000 \
			>"$d/n$n/babble.log" 2>&1 &
		node_pids+=($!)
		mkfifo "$d/n$n/in"
		(cd "$d/n$n" && exec ip netns exec "$ns" "$dir/dummy" --name "node$n" --client-listen 127.0.0.1:1339 \
			--proxy-connect 127.0.0.1:1338 --log warn <"$d/n$n/in" >"$d/n$n/dummy.log" 2>&1) &
		node_pids+=($!)
		exec {fd}>"$d/n$n/in"
		eval "in$n=$fd"
	done
	# Transactions typed on each node: the dummy submits "nodeN: tx-N-i".
	sleep 2
	for i in 1 2 3 4 5; do
		echo "tx-1-$i" >&"$in1"
		echo "tx-2-$i" >&"$in2"
		sleep 0.3
	done
	for _ in $(seq 120); do
		a=$(committed 1) b=$(committed 2)
		if [ "$(echo "$a" | grep -c tx-)" = 10 ] && [ "$a" = "$b" ]; then return 0; fi
		sleep 0.5
	done
	return 1
}

# A set-up that Babble's TURN client hangs is abandoned and made again
# (at most three times, saying so); the check is never retried alone.
ok=
for try in 1 2 3; do
	if nodes "$try"; then ok=1; break; fi
	echo "babble-demo: set-up $try did not converge (logs in $dir/try$try): two fresh nodes again"
	for p in "${node_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done # SIGTERM: a node tries to leave through consensus first
	for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
	node_pids=()
	exec {in1}>&- {in2}>&-
done
pids+=("${node_pids[@]}")
echo "node 1 committed:"; echo "$a" | sed 's/^/  /'
echo "node 2 committed:"; echo "$b" | sed 's/^/  /'
relayed=$(ip netns exec "$R" curl -sk "https://$RELAY:8443/metrics" | awk '/^meetpoint_turn_relayed_bytes_total/ {s += $2} END {print s + 0}')
allocs=$(ip netns exec "$R" curl -sk "https://$RELAY:8443/metrics" | awk '/^meetpoint_turn_allocations_total/ {print $2}')
echo "meetpoint: $allocs TURN allocations, $relayed bytes relayed"
if [ -z "$ok" ] || [ "$relayed" = 0 ]; then
	KEEP=1
	echo "babble-demo: FAILED: the nodes did not commit the same 10 transactions through meetpoint" >&2
	for f in "$dir"/try*/n*/babble.log "$dir/meetpoint.log"; do echo "== $f"; tail -n 5 "$f"; done >&2
	exit 1
fi
echo "babble-demo: both nodes committed the same 10 transactions, in the same order, through meetpoint's signalling and TURN"
