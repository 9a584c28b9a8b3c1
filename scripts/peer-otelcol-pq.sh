#!/usr/bin/env bash
# The peer of spillway's spill path, measured side by side in one run: the
# OpenTelemetry Collector 0.161 with the Zipkin receiver, the Zipkin
# exporter and a `file_storage` persistent sending queue (`fsync: true`) in
# front of a dead backend, against `spillway generate` in front of the same
# dead backend. Both write every span they take to disk and confirm it only
# once it is there; the backend refuses every connection, so nothing leaves.
#
#   scripts/peer-otelcol-pq.sh build                  # once; a few minutes, cached
#   scripts/peer-otelcol-pq.sh run [RATE] [SECS] [ROUNDS]
#
# `run` records for SECS seconds (default 10), ROUNDS times (default 3),
# each round in this order:
#   - the peer: one `spillway generate` sends PEER_RATE spans/s (default
#     100000, above what the peer takes here) to the collector's Zipkin
#     receiver, then two at once (PEER_RATE/2 each); what the receiver accepts is
#     in its persistent queue (synced) before it answers, so the peer's
#     durable rate is its own count of accepted spans
#     (`otelcol_receiver_accepted_spans`) a second. Its CPU (utime + stime
#     of the collector) is divided by the spans it took, its queue's disk
#     blocks too;
#   - spillway: `generate --threads 2 --rate RATE` (default 250000) with the
#     dead backend as its collector; its durable rate is `spooled` a second, its CPU is the whole
#     process's (recording included), its spool's disk blocks a span.
# Each line is one measurement; the last lines give the medians and the
# ratios spillway / peer. Everything listens on 127.0.0.1 only; the work
# directory (a fresh mktemp -d, removed at exit) holds every file.
#
# The collector's sending queue measures requests (one per POST) and holds
# up to 1,000,000 of them, so it never fills in a run: what limits the peer
# is the path from the receiver to a synced file, as for spillway.
set -euo pipefail
version=0.161.0
cache=${SPILLWAY_CACHE:-$HOME/.cache/spillway}
dir=$cache/peer-otelcol-pq-$version
bin=$dir/peer-otelcol-pq
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/service.sh"

build() {
  [ -x "$bin" ] && return 0
  mkdir -p "$dir"
  echo "peer-otelcol-pq.sh: building the collector $version with its builder (a few minutes, once)" >&2
  GOBIN="$dir" go install "go.opentelemetry.io/collector/cmd/builder@v$version" >&2
  local work contrib=github.com/open-telemetry/opentelemetry-collector-contrib
  work=$(mktemp -d)
  cat >"$work/builder.yaml" <<YAML
dist:
  name: peer-otelcol-pq
  description: OpenTelemetry Collector with a persistent Zipkin sending queue, spillway's peer
  output_path: $work/out
receivers:
  - gomod: $contrib/receiver/zipkinreceiver v$version
exporters:
  - gomod: $contrib/exporter/zipkinexporter v$version
extensions:
  - gomod: $contrib/extension/storage/filestorage v$version
providers:
  - gomod: go.opentelemetry.io/collector/confmap/provider/fileprovider v1.67.0
  - gomod: go.opentelemetry.io/collector/confmap/provider/envprovider v1.67.0
YAML
  (cd "$work" && "$dir/builder" --config builder.yaml >"$work/build.log" 2>&1) || {
    tail -30 "$work/build.log" >&2
    exit 1
  }
  mv "$work/out/peer-otelcol-pq" "$bin"
  rm -rf "$work"
}

# A TCP port on 127.0.0.1 that nothing listens on: the dead backend's, the
# receiver's.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

listening_on() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cpu_ticks PID: the process's utime + stime, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# blocks DIR: the bytes of disk blocks DIR's files hold.
blocks() { du -s -B1 "$1" | cut -f1; }

# json_field JSON NAME
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# generate SPOOL ENDPOINT RATE THREADS: one `spillway generate` run; prints
# its JSON accounting (one line).
generate() {
  "$spillway" --spool "$1" generate --endpoint "$2" --rate "$3" --threads "$4" \
    --duration "${secs}s" --json 2>>"$work/generate.log"
}

# peer SENDERS: one measurement of the collector, fed by SENDERS generates.
peer() {
  local senders=$1 port metrics pid t0 t1 took secs_run=0 i out
  port=$(free_port)
  metrics=$(free_port)
  rm -rf "$work/queue" "$work"/gen-*
  mkdir -p "$work/queue"
  cat >"$work/collector.yaml" <<YAML
receivers:
  zipkin:
    endpoint: 127.0.0.1:$port
extensions:
  file_storage:
    directory: $work/queue
    fsync: true
exporters:
  zipkin:
    endpoint: http://127.0.0.1:$dead/api/v2/spans
    sending_queue:
      enabled: true
      storage: file_storage
      queue_size: 1000000
service:
  extensions: [file_storage]
  telemetry:
    metrics:
      level: normal
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: $metrics
    logs:
      level: error
  pipelines:
    traces:
      receivers: [zipkin]
      exporters: [zipkin]
YAML
  "$bin" --config "file:$work/collector.yaml" >"$work/collector.log" 2>&1 &
  pid=$!
  echo "$pid" >"$work/collector.pid"
  await_up "peer-otelcol-pq.sh: the collector" "$work/collector.pid" "$work/collector.log" 120 0.5 \
    listening_on "$port"
  t0=$(cpu_ticks "$pid")
  # A generate exits 1 when spans are left undelivered, as they are here:
  # its JSON is what counts.
  local pids=()
  for i in $(seq 1 "$senders"); do
    generate "$work/gen-$i" "http://127.0.0.1:$port/api/v2/spans" $((peer_rate / senders)) 2 >"$work/gen-$i.json" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  # A request that timed out at the sender may still land: count what the
  # receiver accepted into the pipeline (the queue), by its own metric.
  sleep 2
  t1=$(cpu_ticks "$pid")
  took=$(curl -s "http://127.0.0.1:$metrics/metrics" |
    awk '/^otelcol_receiver_accepted_spans/ {s += $NF} END {printf "%d", s}')
  for i in $(seq 1 "$senders"); do
    out=$(cat "$work/gen-$i.json")
    secs_run=$(python3 -c "print(max($secs_run, $(json_field "$out" seconds)))")
  done
  local bytes
  bytes=$(blocks "$work/queue")
  stop_pidfile "$work/collector.pid"
  python3 -c "
took, secs, ticks, hz, b = $took, $secs_run, $((t1 - t0)), $(getconf CLK_TCK), $bytes
print(f'peer $senders sender(s): {took / secs:.0f} spans/s durable, {ticks / hz / max(took, 1) * 1e6:.1f} us CPU a span, {b / max(took, 1):.1f} bytes a span ({took} spans in {secs:.1f} s)')
" | tee -a "$work/lines"
}

# spillway_side: one measurement of `generate` spooling in front of the
# dead backend.
spillway_side() {
  local out user sys spooled dropped seconds bytes
  rm -rf "$work/spool"
  local TIMEFORMAT='%U %S'
  { time generate "$work/spool" "http://127.0.0.1:$dead/api/v2/spans" "$rate" 2 >"$work/spillway.json" || true; } 2>"$work/time"
  out=$(cat "$work/spillway.json")
  read -r user sys <"$work/time"
  spooled=$(json_field "$out" spooled)
  dropped=$(json_field "$out" dropped)
  seconds=$(json_field "$out" seconds)
  bytes=$(blocks "$work/spool")
  python3 -c "
sp, secs, cpu, b, dr = $spooled, $seconds, $user + $sys, $bytes, $dropped
print(f'spillway: {sp / secs:.0f} spans/s durable, {cpu / max(sp, 1) * 1e6:.1f} us CPU a span, {b / max(sp, 1):.1f} bytes a span ({sp} spans in {secs:.1f} s, {dr} dropped)')
" | tee -a "$work/lines"
}

case "${1:-}" in
  build) build ;;
  run)
    rate=${2:-250000}
    secs=${3:-10}
    rounds=${4:-3}
    peer_rate=${PEER_RATE:-100000}
    build
    (cd "$root" && cargo build -q --release --bin spillway)
    spillway=$root/target/release/spillway
    work=$(mktemp -d)
    trap 'stop_pidfile "$work/collector.pid"; rm -rf "$work"' EXIT
    dead=$(free_port)
    echo "peer-otelcol-pq.sh: spillway $rate spans/s, the peer $peer_rate, for $secs s, $rounds rounds; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    for r in $(seq 1 "$rounds"); do
      echo "-- round $r"
      peer 1
      peer 2
      spillway_side
    done
    echo "-- medians of $rounds rounds"
    python3 - "$work/lines" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rest = line.split(":", 1)
    nums = [float(x) for x in re.findall(r"([\d.]+) (?:spans/s|us CPU|bytes a span)", rest)]
    rows.setdefault(name, []).append(nums)
med = {k: [statistics.median(c) for c in zip(*v)] for k, v in rows.items()}
for k, (rate, cpu, size) in med.items():
    print(f"{k}: {rate:.0f} spans/s durable, {cpu:.1f} us CPU a span, {size:.1f} bytes a span")
s = med.get("spillway")
for k, (rate, cpu, size) in med.items():
    if k != "spillway" and s:
        print(f"spillway / {k}: {s[0] / rate:.1f}x the spans/s, {cpu / s[1]:.1f}x less CPU a span, {size / s[2]:.1f}x less disk a span")
PY
    ;;
  *)
    echo "usage: scripts/peer-otelcol-pq.sh build|run [RATE] [SECS] [ROUNDS]" >&2
    exit 2
    ;;
esac
