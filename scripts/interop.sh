#!/usr/bin/env bash
# make interop: meetpoint against nymea-remoteproxy's real binaries.
#
#   1. unpacks nymea-remoteproxy 1.8.4 and 1.13.0 from $NYMEA_PEERS
#      (default ../shared/peers) into $MEETPOINT_INTEROP_CACHE (default
#      ~/.cache/meetpoint-interop) and builds them there (qmake, without
#      nymea's tests and monitor) — reused while the archive is unchanged;
#   2. builds nymea's own QtTest suites of each, patched in the cache to
#      test an external server (build_tests), and scripts/interop/probe (our
#      small driver of nymea's client library) against each;
#   3. builds meetpoint and runs scripts/interop: one PASS/FAIL line per cell
#      and target, one SUITE line per QtTest suite, a Markdown matrix in
#      results/interop-<time>.md, and exit status 1 on a verdict against
#      meetpoint (docs/interop.md).
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

# build_tests VERSION: nymea's own QtTest suites (tests/ of that tree),
# pointed at an external server: every URL the tests take from their
# in-process engine, or from their fixed wss:// and ssl:// URLs, goes
# through meetpointExternal(), which reads MEETPOINT_URL_<port> (the port
# the engine would have used) and falls back to nymea's own. Checks of the
# server's own identity (its server name, version and API version against
# nymea's) become MEETPOINT_IDENTITY: a difference is printed as a QWARN
# line and the row goes on (scripts/interop reports it). The tests'
# sources are patched in the cache only; nothing of them is in this
# repository.
tests_patch=2 # bump when the patch below changes
build_tests() {
	local v=$1 dir="$cache/nymea-remoteproxy-$1" tgz="$peers/nymea-remoteproxy-$1.tar.gz"
	local sum
	sum=$( (cat "$dir/.meetpoint-build"; echo "patch $tests_patch") | sha256sum | cut -c1-64)
	if [ "$(cat "$dir/tests/.meetpoint-build" 2>/dev/null)" = "$sum" ]; then
		return
	fi
	echo "interop: building nymea-remoteproxy $v's test suites (once; log in $cache/build-tests-$v.log)"
	rm -rf "$dir/tests"
	tar -xzf "$tgz" -C "$cache" "nymea-remoteproxy-$v/tests"
	local h="$dir/tests/testbase/basetest.h"
	sed -i 's|^#include <QSslConfiguration>$|#include <QSslConfiguration>\
#include <QUrl>\
\
// meetpoint interop: the server under test is external.\
static inline QUrl meetpointExternal(const QUrl \&url) {\
    const QByteArray v = qgetenv(QByteArray("MEETPOINT_URL_") + QByteArray::number(url.port()));\
    return v.isEmpty() ? url : QUrl(QString::fromUtf8(v));\
}\
#define MEETPOINT_IDENTITY(actual, expected) do { const QString a_ = (actual), e_ = (expected); \\\
    if (a_ != e_) qWarning("MEETPOINT-IDENTITY %s: \\"%s\\" where nymea says \\"%s\\"", #actual, qPrintable(a_), qPrintable(e_)); } while (0)|' "$h"
	sed -i 's|= QUrl("\([a-z]*://127\.0\.0\.1:[0-9]*\)");|= meetpointExternal(QUrl("\1"));|' "$h"
	local ids='\(SERVER_NAME_STRING\|SERVER_VERSION_STRING\|API_VERSION_STRING\)'
	find "$dir/tests" -name '*.cpp' -exec sed -i \
		-e 's|Engine::instance()->\([A-Za-z]*\)()->serverUrl()|meetpointExternal(Engine::instance()->\1()->serverUrl())|g' \
		-e "s#QCOMPARE(\\(.*\\), QString($ids));#MEETPOINT_IDENTITY(\\1, QString(\\2));#" \
		-e "s#QVERIFY(\\(.*\\) == $ids);#MEETPOINT_IDENTITY(\\1, QString(\\2));#" {} +
	if ! grep -q meetpointExternal "$h" || ! grep -rq MEETPOINT_IDENTITY "$dir/tests"/test-*/*.cpp; then
		echo "interop: patching nymea-remoteproxy $v's tests failed" >&2
		exit 2
	fi
	if ! (cd "$dir/tests" && qmake && make -j"$jobs") >"$cache/build-tests-$v.log" 2>&1; then
		tail -40 "$cache/build-tests-$v.log" >&2
		exit 2
	fi
	echo "$sum" >"$dir/tests/.meetpoint-build"
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
build_tests 1.8.4
build_tests 1.13.0
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
