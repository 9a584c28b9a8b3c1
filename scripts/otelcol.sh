#!/usr/bin/env bash
# Build, start, stop or query an OpenTelemetry Collector on 127.0.0.1 with
# only the Zipkin receiver and the file exporter: the tests' second,
# independent Zipkin receiver.
#
#   scripts/otelcol.sh build    # build it with the collector's builder (once; ~3 min, cached)
#   scripts/otelcol.sh start    # build if needed, start, wait until it listens
#   scripts/otelcol.sh stop
#   scripts/otelcol.sh status
#   scripts/otelcol.sh bin      # build if needed, print the binary's path
#
# OTELCOL_PORT (9412) and SPILLWAY_CACHE (~/.cache/spillway) can be
# overridden. What it receives is written as OTLP JSON lines to
# $SPILLWAY_CACHE/otelcol-$OTELCOL_PORT.jsonl. It listens on 127.0.0.1 only
# and its own telemetry is off.
set -euo pipefail
version=0.161.0
port=${OTELCOL_PORT:-9412}
cache=${SPILLWAY_CACHE:-$HOME/.cache/spillway}
dir=$cache/otelcol-$version
bin=$dir/spillway-otelcol
pidfile=$cache/otelcol-$port.pid
log=$cache/otelcol-$port.log
out=$cache/otelcol-$port.jsonl
conf=$cache/otelcol-$port.yaml
here=$(cd "$(dirname "$0")" && pwd)
. "$here/service.sh"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

build() {
  [ -x "$bin" ] && return 0
  mkdir -p "$dir"
  echo "otelcol.sh: building the collector $version with its builder (a few minutes, once)" >&2
  GOBIN="$dir" go install "go.opentelemetry.io/collector/cmd/builder@v$version" >&2
  local work
  work=$(mktemp -d)
  sed "s#OUTPUT_PATH#$work/out#" "$here/otelcol-builder.yaml" >"$work/builder.yaml"
  (cd "$work" && "$dir/builder" --config builder.yaml >"$work/build.log" 2>&1) || {
    tail -30 "$work/build.log" >&2
    exit 1
  }
  mv "$work/out/spillway-otelcol" "$bin"
  rm -rf "$work"
}

case "${1:-}" in
  build) build ;;
  bin)
    build
    echo "$bin"
    ;;
  start)
    if listening; then echo "otelcol.sh: already up on 127.0.0.1:$port" >&2; exit 0; fi
    build
    cat >"$conf" <<YAML
receivers:
  zipkin:
    endpoint: 127.0.0.1:$port
exporters:
  file:
    path: $out
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [zipkin]
      exporters: [file]
YAML
    : >"$out"
    nohup "$bin" --config "file:$conf" >"$log" 2>&1 &
    echo $! >"$pidfile"
    await_up "otelcol.sh: the collector on 127.0.0.1:$port" "$pidfile" "$log" 60 0.5 listening
    echo "otelcol.sh: up on 127.0.0.1:$port (pid $(cat "$pidfile")), writing $out" >&2
    ;;
  stop) stop_pidfile "$pidfile" ;;
  status)
    if listening; then echo "up on 127.0.0.1:$port, writing $out"; else echo "down on 127.0.0.1:$port"; exit 1; fi
    ;;
  out) echo "$out" ;;
  *)
    echo "usage: scripts/otelcol.sh build|start|stop|status|bin|out" >&2
    exit 2
    ;;
esac
