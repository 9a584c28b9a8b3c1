//! The locks, condition variables, channels and threads work is handed over
//! with (the disk thread's jobs and answers; the tracer's own locks,
//! spiller wake-up and spiller thread): std's, or, with the `model`
//! feature, shuttle's, so that the model tests of `export::disk` and
//! `tracer` can explore the schedules of the hand-offs (shuttle does not
//! model time: a timed wait there waits for a notification). Locks held
//! only for a few instructions with no hand-off inside (the shards', the
//! circuit's, statics) stay std's or their own. Nothing else may use the
//! `model` build: outside a shuttle run its primitives panic.

#[cfg(not(feature = "model"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
#[cfg(not(feature = "model"))]
pub(crate) use std::thread;

#[cfg(feature = "model")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard, mpsc};
#[cfg(feature = "model")]
pub(crate) use shuttle::thread;

/// Runs the model test `f` under `SPILLWAY_MODEL_SCHEDULES` (default 300)
/// random schedules, on stacks deep enough for sled and the exporter
/// (shuttle's default of 60 KiB is not).
#[cfg(all(test, feature = "model"))]
pub(crate) fn check_random(f: impl Fn() + Send + Sync + 'static) {
    let schedules = std::env::var("SPILLWAY_MODEL_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    shuttle::Runner::new(shuttle::scheduler::RandomScheduler::new(schedules), config).run(f);
}
