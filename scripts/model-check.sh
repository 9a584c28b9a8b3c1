#!/usr/bin/env bash
# Model-checks the hand-offs: shuttle runs the real Disk and its worker
# under random schedules of the threads that hand it spills and stop it
# (src/export/disk/model.rs), and a real tracer under random schedules of
# recording, a flush, the spiller and a shutdown (src/tracer/model.rs);
# each module says which invariants. The `model` feature swaps the
# hand-offs' locks, channels and threads for shuttle's, so only those
# modules' tests run in this build.
#   scripts/model-check.sh [SCHEDULES per scenario, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
export SPILLWAY_MODEL_SCHEDULES=${1:-300}
cargo test --locked --features model --lib -- export::disk::model tracer::model
