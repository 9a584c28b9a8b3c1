#!/usr/bin/env bash
# Model-checks the disk thread's hand-off: shuttle runs the real Disk and
# its worker under random schedules of the threads that hand it spills
# and stop it (src/export/disk/model.rs says which invariants). The
# `model` feature swaps the disk thread's locks, channels and threads for
# shuttle's, so only that module's tests run in this build.
#   scripts/model-check.sh [SCHEDULES per scenario, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
export SPILLWAY_MODEL_SCHEDULES=${1:-300}
cargo test --locked --features model --lib export::disk::model
