//! Interned span and event names: one set for the whole process, leaked
//! once and shared by every tracer, and a small per-shard front to it.
//!
//! Invariants: a name is leaked at most once per process, and at most
//! [`MAX_INTERNED_NAMES`] names of at most [`MAX_INTERNED_LEN`] bytes are
//! (2 MiB at worst for the process, however many tracers it builds or
//! rebuilds); past that, names are owned. A shard's front takes the
//! process's lock only on its own miss, at most [`MAX_NAMES_PER_SHARD`]
//! times; the lock is never held while anything else is taken.

use super::{MAX_INTERNED_LEN, MAX_INTERNED_NAMES, MAX_NAMES_PER_SHARD, NAME_CACHE};
use std::borrow::Cow;
use std::sync::{LazyLock, Mutex, PoisonError};

/// The process's interned names.
static INTERNED: LazyLock<Mutex<rustc_hash::FxHashSet<&'static str>>> = LazyLock::new(Default::default);

/// `name` from the process's set, leaked into it if new and there is
/// room; `None` past the bounds.
fn intern(name: &str) -> Option<&'static str> {
    if name.len() > MAX_INTERNED_LEN {
        return None;
    }
    // Nothing panics under this lock; a poisoned one is still a set.
    let mut set = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&interned) = set.get(name) {
        return Some(interned);
    }
    if set.len() >= MAX_INTERNED_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(Box::from(name));
    set.insert(leaked);
    Some(leaked)
}

/// A shard's front to the process's names: the names it has seen (at
/// most [`MAX_NAMES_PER_SHARD`]), and a small cache keyed by the caller's
/// string address: bext's names are mostly literals, so the same address
/// comes back with the same text, and a hit costs a comparison instead of
/// a hash and a probe. The text is always compared, so a reused address
/// with other text is a miss, never a wrong name.
#[derive(Default)]
pub(super) struct Names {
    set: rustc_hash::FxHashSet<&'static str>,
    recent: [Option<(usize, &'static str)>; NAME_CACHE],
}

impl Names {
    #[inline(always)]
    pub(super) fn get(&mut self, name: &str) -> Cow<'static, str> {
        let addr = name.as_ptr() as usize;
        let slot = (addr >> 3 ^ name.len()) % NAME_CACHE;
        if let Some((a, interned)) = self.recent[slot]
            && a == addr
            && interned == name
        {
            return Cow::Borrowed(interned);
        }
        self.get_uncached(name, slot)
    }

    /// [`Names::get`] past a cache miss: this shard's names, then the
    /// process's.
    #[cold]
    fn get_uncached(&mut self, name: &str, slot: usize) -> Cow<'static, str> {
        let addr = name.as_ptr() as usize;
        let found = match self.set.get(name) {
            Some(&interned) => Some(interned),
            None if self.set.len() < MAX_NAMES_PER_SHARD => intern(name).inspect(|&interned| {
                self.set.insert(interned);
            }),
            None => None,
        };
        match found {
            Some(interned) => {
                self.recent[slot] = Some((addr, interned));
                Cow::Borrowed(interned)
            }
            None => Cow::Owned(name.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_and_a_reused_address_with_other_text_is_not_mistaken() {
        let mut names = Names::default();
        let mut buf = String::from("GET /a");
        let first = names.get(&buf);
        assert!(matches!(first, Cow::Borrowed("GET /a")));
        assert!(matches!(names.get("GET /a"), Cow::Borrowed(s) if std::ptr::eq(s, &*first)));
        // Same address and length, other text: a cache hit would be wrong.
        buf.replace_range(.., "GET /b");
        assert_eq!(names.get(&buf), "GET /b");
        assert_eq!(names.get(&buf), "GET /b");
        assert_eq!(names.set.len(), 2);
    }

    #[test]
    fn every_shard_of_every_tracer_shares_the_processs_copy() {
        // Two shards of two tracers, the name in a buffer of each.
        let (mut one, mut other) = (Names::default(), Names::default());
        let (a, b) = (String::from("GET /shared"), String::from("GET /shared"));
        let (a, b) = (one.get(&a), other.get(&b));
        assert!(matches!((&a, &b), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)));
    }

    #[test]
    fn a_name_longer_than_the_bound_is_owned() {
        let long = "n".repeat(MAX_INTERNED_LEN + 1);
        assert!(matches!(Names::default().get(&long), Cow::Owned(_)));
    }
}
