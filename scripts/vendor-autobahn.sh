#!/usr/bin/env bash
# Refreshes third_party/autobahn-browser (autobahn-js's browser build, MIT):
# the WAMP client the Chromium signalling test runs. The test loads the
# committed copy; nothing is fetched when tests run.
#   scripts/vendor-autobahn.sh [VERSION]   (default: the pinned one)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-22.11.1}
pinned=11dbee872612291599f7ccf1338ef6b0da4c685eee0b9f2add58c978a3ad8ee3 # the package's own CHECKSUM.SHA256 agrees
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "autobahn-browser@$version" >/dev/null && tar xzf autobahn-browser-*.tgz)
dst=third_party/autobahn-browser
mkdir -p "$dst"
cp "$tmp/package/autobahn.min.js" "$tmp/package/LICENSE" "$dst/"
got=$(sha256sum "$dst/autobahn.min.js" | cut -d' ' -f1)
echo "autobahn-browser $version: sha256 $got"
if [ "$version" = 22.11.1 ] && [ "$got" != "$pinned" ]; then
	echo "checksum differs from the pinned $pinned" >&2
	exit 1
fi
