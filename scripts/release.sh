#!/usr/bin/env bash
# Cross-compiles meetpoint for linux/amd64 and linux/arm64 into dist/:
#   dist/meetpoint-linux-amd64, dist/meetpoint-linux-arm64,
#   dist/meetpoint-<version>-linux-<arch>.tar.gz (binary, unit, sysctl file,
#   operations guide), dist/meetpoint-js-<version>.tgz (the JavaScript
#   client as an npm package: `npm publish dist/meetpoint-js-<version>.tgz`)
#   and dist/SHA256SUMS.
# Static binaries (CGO_ENABLED=0): no libc dependency, run on any distro.
# Usage: VERSION=v1.2.3 scripts/release.sh   (make release does this)
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ARCHES=${ARCHES:-"amd64 arm64"}
DIST=${DIST:-dist}
LDFLAGS="-s -w -X main.version=${VERSION}"

mkdir -p "$DIST"
rm -f "$DIST"/SHA256SUMS
for arch in $ARCHES; do
	out="$DIST/meetpoint-linux-$arch"
	echo "== building $out ($VERSION)"
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$out" ./cmd/meetpoint
	pkg="meetpoint-$VERSION-linux-$arch"
	stage=$(mktemp -d)
	mkdir -p "$stage/$pkg"
	cp "$out" "$stage/$pkg/meetpoint"
	cp scripts/meetpoint.service scripts/sysctl-meetpoint.conf "$stage/$pkg/"
	cp docs/operations.md "$stage/$pkg/" 2>/dev/null || true
	cp README.md "$stage/$pkg/" 2>/dev/null || true
	tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$DIST/$pkg.tar.gz" "$pkg"
	rm -rf "$stage"
done
# The npm package: client/js with the release's version in package.json and
# in meetpoint.js (VERSION), in npm pack's layout (package/…). A version that
# is not semver (a commit hash, "dev") keeps package.json's.
jsver=${VERSION#v}
if ! [[ $jsver =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
	jsver=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' client/js/package.json)
fi
stage=$(mktemp -d)
mkdir -p "$stage/package"
cp client/js/meetpoint.js client/js/meetpoint.d.ts client/js/README.md "$stage/package/"
sed "s/^  \"version\": \".*\",$/  \"version\": \"$jsver\",/" client/js/package.json > "$stage/package/package.json"
sed -i "s/^export const VERSION = \".*\";$/export const VERSION = \"$jsver\";/" "$stage/package/meetpoint.js"
grep -q "\"version\": \"$jsver\"" "$stage/package/package.json" && grep -q "VERSION = \"$jsver\"" "$stage/package/meetpoint.js" ||
	{ echo "release: could not stamp version $jsver into the npm package" >&2; exit 1; }
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$DIST/meetpoint-js-$jsver.tgz" package
rm -rf "$stage"
(cd "$DIST" && sha256sum meetpoint-linux-* meetpoint-*.tar.gz meetpoint-js-*.tgz > SHA256SUMS)
echo "== $DIST:"
ls -l "$DIST"
