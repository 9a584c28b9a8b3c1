#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for SECONDS each on the
# stable toolchain, and prints executions and coverage per target.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 30 s, all targets
# New inputs go to target/fuzz-corpus/<target> (seeded from fuzz/corpus/<target>,
# which stays as committed). A crash stops the run with exit 1 and leaves its
# input in fuzz/artifacts/<target>/: commit it under fuzz/corpus/<target>/ as a
# regression seed once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config spool_record spool_dir zipkin_json zipkin_proto3 tracer_ops)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
build_log=$(mktemp)
cargo fuzz build -O >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }
for t in "${targets[@]}"; do
    # A target without committed seeds starts from an empty corpus.
    mkdir -p "target/fuzz-corpus/$t" "fuzz/corpus/$t"
    log="target/fuzz-$t.log"
    # The tracer interns names as leaked &'static str by design (bounded per
    # tracer); tracer_ops builds a tracer per input, so leak checks are off there.
    leaks=1
    [ "$t" = tracer_ops ] && leaks=0
    if ! ASAN_OPTIONS="detect_leaks=$leaks" cargo fuzz run -O "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -detect_leaks="$leaks" -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz $t: FAILED (input kept in fuzz/artifacts/$t/)" >&2
        grep -E "panicked|ERROR|SUMMARY|assert" "$log" | head -20 >&2 || true
        exit 1
    fi
    runs=$(grep -oE "^Done [0-9]+ runs" "$log" | grep -oE "[0-9]+" || echo "?")
    cov=$(grep -E "^#[0-9]+" "$log" | tail -1 | grep -oE "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+" || echo "cov: ?")
    echo "fuzz $t: ok, $runs runs in ${seconds}s, $cov"
done
