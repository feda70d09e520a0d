#!/usr/bin/env bash
# make interop: meetpoint against nymea-remoteproxy's real binaries.
#
#   1. unpacks nymea-remoteproxy 1.8.4 and 1.13.0 from $NYMEA_PEERS
#      (default ../shared/peers) into $MEETPOINT_INTEROP_CACHE (default
#      ~/.cache/meetpoint-interop) and builds them there (qmake, without
#      nymea's tests and monitor) — reused while the archive is unchanged;
#   2. builds scripts/interop/probe (our small driver of nymea's client
#      library) against each;
#   3. builds meetpoint and runs scripts/interop: one PASS/FAIL line per cell
#      and target, a Markdown matrix in results/interop-<time>.md, and exit
#      status 1 when meetpoint fails a cell that nymea's own server passes.
#
# Needs Qt 5 (qtbase5-dev qt5-qmake libqt5websockets5-dev), g++ and
# dpkg-parsechangelog; they are installed with apt-get (sudo unless root) if
# missing.
# Nothing is copied from nymea into this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
peers=${NYMEA_PEERS:-$repo/../shared/peers}
cache=${MEETPOINT_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meetpoint-interop}
jobs=$(nproc)
mkdir -p "$cache" results

deps="qtbase5-dev qtbase5-dev-tools qt5-qmake libqt5websockets5-dev build-essential pkg-config dpkg-dev"
have_deps() {
	command -v qmake >/dev/null && command -v g++ >/dev/null && command -v dpkg-parsechangelog >/dev/null &&
		[ -e "$(qmake -query QT_INSTALL_HEADERS)/QtWebSockets/QWebSocket" ]
}
if ! have_deps; then
	SUDO=
	if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
	if ! command -v apt-get >/dev/null || { [ -n "$SUDO" ] && ! command -v sudo >/dev/null; }; then
		echo "interop: needs $deps" >&2
		exit 2
	fi
	echo "interop: installing $deps"
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $deps >/dev/null
fi

# build_nymea VERSION: the tree in $cache, built from the archive.
build_nymea() {
	local v=$1 tgz="$peers/nymea-remoteproxy-$1.tar.gz" dir="$cache/nymea-remoteproxy-$1"
	[ -f "$tgz" ] || { echo "interop: $tgz not found (set NYMEA_PEERS)" >&2; exit 2; }
	local sum
	sum=$(sha256sum "$tgz" | cut -c1-64)
	if [ "$(cat "$dir/.meetpoint-build" 2>/dev/null)" = "$sum" ]; then
		return
	fi
	echo "interop: building nymea-remoteproxy $v (once; log in $cache/build-$v.log)"
	rm -rf "$dir"
	tar -xzf "$tgz" -C "$cache"
	if ! (cd "$dir" && qmake CONFIG+=disabletests CONFIG+=disablemonitor && make -j"$jobs") >"$cache/build-$v.log" 2>&1; then
		tail -40 "$cache/build-$v.log" >&2
		exit 2
	fi
	echo "$sum" >"$dir/.meetpoint-build"
}

# build_probe VERSION: scripts/interop/probe against that nymea tree.
build_probe() {
	local v=$1 dir="$cache/probe-$1"
	local sum
	sum=$(cat scripts/interop/probe/probe.pro scripts/interop/probe/probe.cpp "$cache/nymea-remoteproxy-$v/.meetpoint-build" | sha256sum | cut -c1-64)
	if [ "$(cat "$dir/.meetpoint-build" 2>/dev/null)" = "$sum" ] && [ -x "$dir/meetpoint-nymea-probe" ]; then
		return
	fi
	rm -rf "$dir" && mkdir -p "$dir"
	if ! (cd "$dir" && qmake NYMEA="$cache/nymea-remoteproxy-$v" "$repo/scripts/interop/probe/probe.pro" && make -j"$jobs") >"$dir/build.log" 2>&1; then
		cat "$dir/build.log" >&2
		exit 2
	fi
	echo "$sum" >"$dir/.meetpoint-build"
}

build_nymea 1.8.4
build_nymea 1.13.0
build_probe 1.8.4
build_probe 1.13.0
go build -o "$cache/bin/meetpoint" ./cmd/meetpoint
go build -o "$cache/bin/interop" ./scripts/interop

out="results/interop-$(date -u +%Y%m%d-%H%M%S).md"
status=0
"$cache/bin/interop" \
	-nymea184 "$cache/nymea-remoteproxy-1.8.4" -nymea113 "$cache/nymea-remoteproxy-1.13.0" \
	-probe184 "$cache/probe-1.8.4/meetpoint-nymea-probe" -probe113 "$cache/probe-1.13.0/meetpoint-nymea-probe" \
	-meetpoint "$cache/bin/meetpoint" -md "$out" "$@" || status=$?
echo "interop: matrix in $out"
exit $status
