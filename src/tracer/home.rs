//! Each thread's home shard: where the spans it starts go while it has
//! room. A new thread takes the home of the thread that exited last, if
//! one has (its shard's slab and buffers are warm: grown to what a thread
//! uses, so the newcomer faults no fresh pages in, which matters to pools
//! that retire and spawn threads), else the next in round-robin order. So
//! up to [`SHARDS`] threads each have a shard of their own: a thread's
//! spans then take neighbouring slots under a lock no other thread takes,
//! and all stay in its core's cache.

use super::SHARDS;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

const UNSET: usize = usize::MAX;
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Homes vacated by exited threads, most recent last, each once (so
/// at most [`SHARDS`]).
static VACATED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The vacated homes, recovering from poison (a panic elsewhere must not
/// stop tracing). std's lock, whatever `crate::sync` is: a static, and
/// held for a push or a pop only.
fn vacated() -> MutexGuard<'static, Vec<usize>> {
    VACATED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A thread's home; vacated when the thread exits.
struct Home(Cell<usize>);

impl Drop for Home {
    fn drop(&mut self) {
        let n = self.0.get();
        if n != UNSET {
            vacate(&mut vacated(), n);
        }
    }
}

/// Adds `n` to the vacated homes unless it is there already: threads
/// that moved to one shard (see `claim`) vacate it once, so new
/// threads do not pile onto it.
pub(super) fn vacate(vacated: &mut Vec<usize>, n: usize) {
    if !vacated.contains(&n) {
        vacated.push(n);
    }
}

thread_local! {
    static HOME: Home = const { Home(Cell::new(UNSET)) };
}

/// The calling thread's home shard, handed out at its first call.
#[inline]
pub(super) fn get() -> usize {
    HOME.try_with(|h| match h.0.get() {
        UNSET => {
            let n = first();
            h.0.set(n);
            n
        }
        n => n,
    })
    .unwrap_or(0)
}

#[cold]
fn first() -> usize {
    let last = vacated().pop();
    last.unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS)
}

/// Moves the calling thread's home to `shard`.
pub(super) fn set(shard: usize) {
    let _ = HOME.try_with(|h| h.0.set(shard));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_given_back_twice_is_vacated_once() {
        let mut vacated = Vec::new();
        for n in [3, 5, 3, 3, 7] {
            vacate(&mut vacated, n);
        }
        assert_eq!(vacated, [3, 5, 7]);
    }
}
