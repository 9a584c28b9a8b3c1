#!/usr/bin/env bash
# Runs the timing-sensitive test files N times (default 1) while a CPU hog
# keeps every core busy, as a loaded production host would be when things
# fail. The hog is stress-ng (--cpu 0: one worker per core), started here
# and stopped on exit, also on failure; it ends by itself after 3 hours at
# most. Every run must be green: a flake is a bug, never noise.
#   scripts/stress-test.sh [N] [extra libtest arguments, as --nocapture]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
shift || true
command -v stress-ng >/dev/null || { echo "stress-test: stress-ng is missing (apt-get install stress-ng)" >&2; exit 1; }
# The test modules (files) of tests/it.rs, each selected by its prefix.
modules=(bounded_flush cli cli_conventions disk_faults crash power_cut full_disk spool_flush outage otelcol_e2e partial_failure)
filters=()
for m in "${modules[@]}"; do filters+=("$m::"); done
# Build first, without the hog, so the runs measure the tests, not rustc.
bash scripts/test.sh --test it --no-run >/dev/null 2>&1 || bash scripts/test.sh --test it --no-run
stress-ng --cpu 0 --cpu-method matrixprod --timeout 3h --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true' EXIT
# The partial-failure loads run for 30 s at 50 k spans/s here, 20 k behind
# Toxiproxy (the suite alone runs them for 120 s at 100 k, 40 k behind
# Toxiproxy): what the hog leaves of two cores.
export PARTIAL_SECS=${PARTIAL_SECS:-30} PARTIAL_RATE=${PARTIAL_RATE:-50000}
export PARTIAL_LINK_RATE=${PARTIAL_LINK_RATE:-20000}
passed=0
for i in $(seq 1 "$runs"); do
  began=$(date +%s)
  if bash scripts/test.sh --test it -- "${filters[@]}" "$@"; then
    passed=$((passed + 1))
    echo "stress-test: run $i of $runs green in $(( $(date +%s) - began )) s (hog: stress-ng --cpu 0, pid $hog)"
  else
    echo "stress-test: run $i of $runs FAILED after $(( $(date +%s) - began )) s" >&2
    echo "stress-test: $passed passed, $((i - passed)) failed" >&2
    exit 1
  fi
done
echo "stress-test: $passed passed, 0 failed (each run under stress-ng --cpu 0)"
