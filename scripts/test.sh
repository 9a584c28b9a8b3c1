#!/usr/bin/env bash
# The test suite: starts a real Zipkin and a real OpenTelemetry Collector on
# 127.0.0.1 (unless they are already up; the collector and Toxiproxy are
# built once, see scripts/otelcol.sh and scripts/toxiproxy.sh), runs every
# test against them, and stops what it started. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${ZIPKIN_PORT:-9411}
otel_port=${OTELCOL_PORT:-9412}
started=()
if ! scripts/zipkin.sh status >/dev/null 2>&1; then
  scripts/zipkin.sh start
  started+=(zipkin)
fi
if ! scripts/otelcol.sh status >/dev/null 2>&1; then
  scripts/otelcol.sh start
  started+=(otelcol)
fi
cleanup() { for s in "${started[@]}"; do "scripts/$s.sh" stop; done; }
trap cleanup EXIT
export SPILLWAY_ZIPKIN_URL=http://127.0.0.1:$port
export SPILLWAY_OTELCOL_URL=http://127.0.0.1:$otel_port
SPILLWAY_OTELCOL_OUT=$(scripts/otelcol.sh out)
SPILLWAY_OTELCOL_BIN=$(scripts/otelcol.sh bin)
export SPILLWAY_OTELCOL_OUT SPILLWAY_OTELCOL_BIN
# For tests that put a faulty link (Toxiproxy) in front of a receiver.
SPILLWAY_TOXIPROXY_BIN=$(scripts/toxiproxy.sh bin)
export SPILLWAY_TOXIPROXY_BIN
# For tests that run a Zipkin of their own (to stop and start it).
SPILLWAY_ZIPKIN_JAR=$(scripts/zipkin.sh jar)
export SPILLWAY_ZIPKIN_JAR
cargo test --locked "$@"
