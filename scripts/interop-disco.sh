#!/usr/bin/env bash
# make interop-disco: code meetpoint did not write, against `meetpoint
# serve` and, as a baseline, against Disco's own server (docs/discovery.md):
# Disco's client (its TestSetGroup, heartbeats, missing groups, a registered
# app's /app/KEY/ URL), Babble's WAMP signalling client (its
# TestWampSelfSigned) and two of Babble's WebRTC transports syncing through
# TURN, relay-only.
#
#   1. unpacks Disco from $DISCO_PEERS (default ../shared/peers) into
#      $MEETPOINT_DISCO_CACHE (default ~/.cache/meetpoint-disco), reused
#      while the archive is unchanged, and links it as interop/disco/.disco
#      (the test module's replace; nothing of Disco enters the repository);
#   2. builds bin/meetpoint and the test module (its dependencies, Babble's
#      included, from the Go module proxy);
#   3. runs the tests in a network namespace of their own with nothing but
#      loopback (unshare: WebRTC there can only connect through TURN).
#
# Needs ip(8) and unshare(1) (iproute2, util-linux); installs iproute2 with
# apt-get if missing. ARGS: go test flags, e.g. -test.run TestSetGroup.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
peers=${DISCO_PEERS:-$repo/../shared/peers}
cache=${MEETPOINT_DISCO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meetpoint-disco}
tgz=$peers/disco-f40c1fc.tar.gz
[ -f "$tgz" ] || { echo "interop-disco: $tgz not found (set DISCO_PEERS)" >&2; exit 2; }

if ! command -v ip >/dev/null; then
	SUDO=
	[ "$(id -u)" != 0 ] && SUDO=sudo
	echo "interop-disco: installing iproute2"
	$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iproute2 >/dev/null
fi
command -v unshare >/dev/null || { echo "interop-disco: needs unshare(1) (util-linux)" >&2; exit 2; }

sum=$(sha256sum "$tgz" | cut -c1-64)
src=$cache/disco-f40c1fc
if [ "$(cat "$src/.meetpoint-unpacked" 2>/dev/null)" != "$sum" ]; then
	rm -rf "$src" && mkdir -p "$cache"
	tar -xzf "$tgz" -C "$cache"
	echo "$sum" >"$src/.meetpoint-unpacked"
fi
ln -sfn "$src" interop/disco/.disco

make build >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd interop/disco && go vet . && go test -c -o "$work/interop.test" .)

# A namespace with only loopback: unprivileged (a user namespace) where the
# kernel allows it, else as root.
ns=(unshare -rn)
"${ns[@]}" true 2>/dev/null || ns=(unshare -n)
"${ns[@]}" true 2>/dev/null || { echo "interop-disco: cannot make a network namespace (unshare -n needs root or user namespaces)" >&2; exit 2; }
cd "$work"
# GOMAXPROCS=1 (the test binary, and the meetpoint it starts): Babble's
# pion/turn v2 client loses a TURN reply that comes before it waits for it
# (TestWebRTCTransportsOverTURN says more); on one processor it does not.
# shellcheck disable=SC2086
GOMAXPROCS=1 MEETPOINT_BIN=$repo/bin/meetpoint "${ns[@]}" sh -c 'ip link set lo up && exec "$0" "$@"' \
	./interop.test -test.v -test.count=1 -test.timeout 15m ${ARGS:-} 2>&1 |
	tee "$work/log" | grep -E '^(=== RUN|--- |    --- |PASS|FAIL|ok|panic)|_test\.go:[0-9]+:'
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "interop-disco: FAILED (whole log: rerun with the same ARGS, or see above)" >&2; exit 1; }
echo "interop-disco: every test passed against meetpoint and against Disco's server"
