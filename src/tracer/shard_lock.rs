//! The lock over one shard of the tracer's span table.
//!
//! Every span takes a shard's lock three times (start, event, end), almost
//! always uncontended: each thread records in a home shard of its own, and
//! the flush takes each shard once per interval, to swap a buffer. So what
//! the lock costs is its uncontended round trip. std's `Mutex` pays two
//! atomic read-modify-writes for it (take, and release: the release must
//! learn whether to wake a sleeper), 12.3 ns on the project's machines.
//! This lock is `spin`'s `SpinMutex`: one compare-exchange to take it, a
//! plain release store to let it go, 5.8 ns.
//!
//! A bare spin lock would be wrong on a busy host: a holder that loses its
//! core mid-section (more runnable threads than cores) would have every
//! waiter spin out its time slice. So a waiter backs off in three stages:
//! it spins, with exponentially more pauses (crossbeam's `Backoff`: 127 in
//! all, a few microseconds, which covers any section the tracer runs), then
//! yields its core four times, then sleeps [`SLEEP`] at a time until the
//! lock is free. The release wakes no one (that is the read-modify-write
//! saved), so a sleeper notices the lock is free by polling: it may take
//! the lock up to [`SLEEP`] late, and only when its holder was descheduled.
//!
//! Invariants:
//! - mutual exclusion: `spin`'s compare-exchange with acquire, and release
//!   on unlock;
//! - a waiter never spins longer than the `Backoff` spin stage before it
//!   gives up its core;
//! - no poisoning: a panic while the lock is held releases it (the guard's
//!   drop) and leaves the state as the panicking call left it, which is
//!   what the tracer did with std's `Mutex`, recovering from poison.

use crossbeam_utils::Backoff;
use spin::mutex::{SpinMutex, SpinMutexGuard};
use std::time::Duration;

/// How long a waiter sleeps between looks, once spinning and yielding have
/// not got it the lock.
pub(crate) const SLEEP: Duration = Duration::from_micros(50);

/// A lock taken with one atomic read-modify-write and released with a
/// store; its waiters back off (see the module docs).
#[derive(Default)]
pub(crate) struct ShardLock<T>(SpinMutex<T>);

/// Access to what a [`ShardLock`] guards, until dropped.
pub(crate) type ShardGuard<'a, T> = SpinMutexGuard<'a, T>;

impl<T> ShardLock<T> {
    /// Takes the lock, waiting as the module docs describe.
    #[inline]
    pub(crate) fn lock(&self) -> ShardGuard<'_, T> {
        match self.0.try_lock() {
            Some(guard) => guard,
            None => self.lock_contended(),
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) -> ShardGuard<'_, T> {
        let backoff = Backoff::new();
        loop {
            // Look before trying, so waiters do not bounce the line.
            if !self.0.is_locked()
                && let Some(guard) = self.0.try_lock()
            {
                return guard;
            }
            if backoff.is_completed() {
                std::thread::sleep(SLEEP);
            } else {
                backoff.snooze();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    #[test]
    fn contending_threads_never_overlap_inside_the_lock() {
        // A non-atomic read-then-write of the guarded pair: overlapping
        // sections would lose increments or see the pair torn.
        const THREADS: u64 = 4;
        const EACH: u64 = 50_000;
        let lock = ShardLock::<(u64, u64)>::default();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..EACH {
                        let mut g = lock.lock();
                        assert_eq!(g.0, g.1, "torn: another thread is inside");
                        let next = g.0 + 1;
                        g.0 = next;
                        std::hint::black_box(&mut *g);
                        g.1 = next;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), (THREADS * EACH, THREADS * EACH));
    }

    /// CPU time the calling thread has used, from Linux's schedstat (its
    /// first field is nanoseconds on a CPU).
    #[cfg(target_os = "linux")]
    fn thread_cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        let nanos = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        Duration::from_nanos(nanos.expect("schedstat's first field"))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_waiter_on_a_descheduled_holder_gives_up_its_core_and_then_gets_the_lock() {
        // The holder keeps the lock for HOLD, as if it had lost its core
        // inside the section; the waiter must mostly sleep, not spin.
        const HOLD: Duration = Duration::from_millis(300);
        let lock = ShardLock::<u32>::default();
        let held = Barrier::new(2);
        let released = AtomicBool::new(false);
        let (waited, cpu) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = lock.lock();
                held.wait();
                std::thread::sleep(HOLD);
                *g = 1;
                released.store(true, Ordering::SeqCst);
            });
            let waiter = s.spawn(|| {
                held.wait();
                let (t, cpu) = (Instant::now(), thread_cpu_time());
                let g = lock.lock();
                assert!(released.load(Ordering::SeqCst), "got the lock while it was held");
                assert_eq!(*g, 1, "and sees what the holder wrote");
                (t.elapsed(), thread_cpu_time().saturating_sub(cpu))
            });
            waiter.join().unwrap_or_default()
        });
        assert!(waited >= HOLD / 2, "the waiter waited: {waited:?}");
        assert!(cpu < waited / 4, "the waiter used {cpu:?} of CPU in {waited:?}");
    }
}
