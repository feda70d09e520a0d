#!/usr/bin/env bash
# Runs the unit tests of the linux/arm64 build under qemu-user
# (Debian's qemu-user-static), so CI on amd64 checks the arm64 build:
# every package's test binary is cross-compiled (go test -c, GOARCH=arm64,
# CGO_ENABLED=0) and run with qemu-aarch64-static from the package's folder.
#
#   scripts/test-arm64.sh               all packages
#   scripts/test-arm64.sh ./relay/...   some
#
# Environment: GO (go), ARM64_TIMEOUT (test timeout per package, 15m),
# ARM64_SKIP (a -test.skip regexp), ARM64_RUN (a -test.run regexp),
# ARM64_SHORT=1 (pass -test.short).
#
# Tests known not to work under qemu-user are listed in QEMU_SKIP below with
# the reason; everything else must pass.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
QEMU=${QEMU:-qemu-aarch64-static}

# Tests that qemu-user cannot run, with the reason (empty: none so far).
QEMU_SKIP=${QEMU_SKIP:-}

if ! command -v "$QEMU" >/dev/null 2>&1; then
	echo "== installing qemu-user-static"
	SUDO=
	if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user-static >/dev/null
fi
"$QEMU" --version | head -1

pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then pkgs=(./...); fi
mapfile -t list < <("$GO" list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' "${pkgs[@]}")

skip=${ARM64_SKIP:-}
if [ -n "$QEMU_SKIP" ]; then skip=${skip:+$skip|}$QEMU_SKIP; fi
args=(-test.timeout "${ARM64_TIMEOUT:-15m}" -test.count 1)
if [ -n "$skip" ]; then args+=(-test.skip "$skip"); fi
if [ -n "${ARM64_RUN:-}" ]; then args+=(-test.run "$ARM64_RUN"); fi
if [ "${ARM64_SHORT:-}" = 1 ]; then args+=(-test.short); fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
fail=0
passed=0
for entry in "${list[@]}"; do
	pkg=${entry%% *}
	dir=${entry#* }
	exe="$bin/$(echo "$pkg" | tr / _).test"
	echo "== $pkg (linux/arm64 under qemu)"
	if ! CGO_ENABLED=0 GOOS=linux GOARCH=arm64 "$GO" test -c -o "$exe" "$pkg"; then
		echo "FAIL $pkg: build"
		fail=$((fail + 1))
		continue
	fi
	# Run it through a wrapper script given as argv[0] (qemu's -0): a test
	# that re-executes itself (os.Args[0]) then starts the wrapper, so it
	# works without binfmt_misc (absent in most containers and CI runners).
	wrap="$exe.sh"
	printf '#!/bin/sh\nexec %s -0 "$0" %s "$@"\n' "$(command -v "$QEMU")" "$exe" > "$wrap"
	chmod +x "$wrap"
	start=$(date +%s)
	if (cd "$dir" && "$wrap" "${args[@]}"); then
		echo "ok   $pkg $(($(date +%s) - start))s"
		passed=$((passed + 1))
	else
		echo "FAIL $pkg"
		fail=$((fail + 1))
	fi
done
echo "arm64: $passed passed, $fail failed"
[ "$fail" -eq 0 ]
