#!/usr/bin/env bash
# The test suite: starts a real Zipkin on 127.0.0.1 (unless one is already
# up), runs every test against it, and stops it again if it started it.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${ZIPKIN_PORT:-9411}
started=0
if ! scripts/zipkin.sh status >/dev/null 2>&1; then
  scripts/zipkin.sh start
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then scripts/zipkin.sh stop; fi; }
trap cleanup EXIT
export SPILLWAY_ZIPKIN_URL=http://127.0.0.1:$port
# For tests that run a Zipkin of their own (to stop and start it).
SPILLWAY_ZIPKIN_JAR=$(scripts/zipkin.sh jar)
export SPILLWAY_ZIPKIN_JAR
cargo test --locked "$@"
