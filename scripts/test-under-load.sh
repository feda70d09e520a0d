#!/usr/bin/env bash
# make test-under-load: the whole suite (make test) while CPU hogs keep
# every core busy, RUNS times in a row (default 1), to show that no test
# depends on an idle machine. Each run's result and duration is printed,
# and again at the end; the exit status is 1 if any run failed.
#
#   scripts/test-under-load.sh [RUNS]
#
# Environment: HOGS (stress-ng --cpu workers, default 4: two per core on
# a 2-core machine), MAKE (make). stress-ng is installed with apt-get
# (sudo unless root) if missing. Each run's output is kept in
# results/test-under-load-N.log.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
hogs=${HOGS:-4}
if ! command -v stress-ng >/dev/null 2>&1; then
	echo "== installing stress-ng"
	sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
	$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq stress-ng >/dev/null || {
		echo "test-under-load: could not install stress-ng (apt-get install stress-ng)" >&2
		exit 2
	}
fi
mkdir -p results
set -m # each background job in a process group of its own: stopped whole
stress-ng --cpu "$hogs" --quiet &
hog=$!
run=""
trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null' EXIT
trap '[ -n "$run" ] && kill -- -"$run" 2>/dev/null; exit 130' INT TERM
echo "== $hogs CPU hogs (stress-ng, pid $hog) on $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
summary=() failed=0
for i in $(seq 1 "$runs"); do
	log=results/test-under-load-$i.log
	start=$(date +%s)
	${MAKE:-make} --no-print-directory test >"$log" 2>&1 &
	run=$!
	wait "$run"
	rc=$?
	run=""
	took=$(($(date +%s) - start))
	if [ $rc -eq 0 ]; then res=ok; else res=FAIL; failed=$((failed + 1)); fi
	line="run $i/$runs: $res in ${took}s (load $(cut -d' ' -f1-3 /proc/loadavg); $log)"
	echo "== $line"
	if [ $rc -ne 0 ]; then grep -E '^(--- FAIL|FAIL|panic:)|^\s+\S+_test\.go:[0-9]+:' "$log" | head -40; fi
	summary+=("$line")
done
echo "== test-under-load: $((runs - failed))/$runs green"
printf '  %s\n' "${summary[@]}"
[ $failed -eq 0 ]
