//! The locks, condition variables, channels and threads the disk thread
//! hands work over with: std's, or, with the `model` feature, shuttle's, so
//! that `export::disk`'s model test can explore the schedules of the
//! hand-off (shuttle does not model time: a timed wait there waits for a
//! notification). Nothing else may use the `model` build: outside a
//! shuttle run its primitives panic.

#[cfg(not(feature = "model"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
#[cfg(not(feature = "model"))]
pub(crate) use std::thread;

#[cfg(feature = "model")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard, mpsc};
#[cfg(feature = "model")]
pub(crate) use shuttle::thread;
