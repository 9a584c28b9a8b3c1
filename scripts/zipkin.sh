#!/usr/bin/env bash
# Start, stop or query a real Zipkin server on 127.0.0.1, for the tests and
# for trying spillway by hand.
#
#   scripts/zipkin.sh start    # fetch the jar from Maven Central if needed, start, wait for /health
#   scripts/zipkin.sh stop
#   scripts/zipkin.sh status
#   scripts/zipkin.sh jar      # fetch if needed, print the exec jar's path
#
# ZIPKIN_VERSION (3.6.1), ZIPKIN_PORT (9411) and SPILLWAY_CACHE
# (~/.cache/spillway: jar, pid file, log) can be overridden.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/service.sh"
version=${ZIPKIN_VERSION:-3.6.1}
port=${ZIPKIN_PORT:-9411}
cache=${SPILLWAY_CACHE:-$HOME/.cache/spillway}
jar=$cache/zipkin-server-$version-exec.jar
pidfile=$cache/zipkin-$port.pid
log=$cache/zipkin-$port.log
url=http://127.0.0.1:$port

healthy() { curl -sf --max-time 2 "$url/health" >/dev/null 2>&1; }

fetch() {
  [ -s "$jar" ] && return 0
  mkdir -p "$cache"
  echo "zipkin.sh: fetching io.zipkin:zipkin-server:$version:exec from Maven Central" >&2
  mvn -q -B dependency:copy -Dartifact="io.zipkin:zipkin-server:$version:jar:exec" \
    -DoutputDirectory="$cache" >&2
}

case "${1:-}" in
  start)
    if healthy; then echo "zipkin.sh: already up at $url" >&2; exit 0; fi
    fetch
    mkdir -p "$cache"
    # Bound to loopback only; the in-memory store keeps up to 500k spans.
    nohup java -Xms256m -Xmx1g -jar "$jar" \
      --armeria.ports[0].port="$port" --armeria.ports[0].address=127.0.0.1 \
      >"$log" 2>&1 &
    echo $! >"$pidfile"
    await_up "zipkin.sh: Zipkin at $url" "$pidfile" "$log" 120 1 healthy
    echo "zipkin.sh: up at $url (pid $(cat "$pidfile"))" >&2
    ;;
  stop) stop_pidfile "$pidfile" ;;
  jar)
    fetch
    echo "$jar"
    ;;
  status)
    if healthy; then echo "up at $url"; else echo "down at $url"; exit 1; fi
    ;;
  *)
    echo "usage: scripts/zipkin.sh start|stop|status|jar" >&2
    exit 2
    ;;
esac
