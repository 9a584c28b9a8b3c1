//! The disk thread's hand-off, model-checked: shuttle runs the real
//! `Disk` and `Worker` (over a real spool in a temporary directory) under
//! many random schedules of the threads that hand it work, and checks the
//! invariants below in every one. Run by `scripts/model-check.sh` (the
//! `model` feature swaps `crate::sync` for shuttle's primitives).
//!
//! Invariants, whatever the interleaving:
//! - every span handed to the thread ends in exactly one place: durable in
//!   the spool (its job answered `Ok`), or back with the caller (refused at
//!   once, answered `Err`, or returned by a failed spill);
//! - a job answered `Ok` is in the spool when it is opened again;
//! - the books agree: what went to disk is `on_disk`, the rest is `held`;
//! - nothing deadlocks: every wait ends by a notification (shuttle has no
//!   timeouts), and `stop` joins the thread (no thread is left behind).

use super::{Books, Disk, Done, Spilled, SpoolFailure};
use crate::span::Span;
use crate::spool::Spool;
use crate::sync::thread;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spans(n: usize, tag: u8) -> Vec<Span> {
    (0..n)
        .map(|i| Span::new([tag; 16], (i as u64 + 1).to_be_bytes(), "s"))
        .collect()
}

/// What one caller's spills came to: spans durable, spans back with it.
#[derive(Default)]
struct Outcome {
    durable: u64,
    back: u64,
}

impl Outcome {
    fn add(&mut self, n: u64, answer: Result<Done<Result<Spilled, SpoolFailure>>, Vec<Span>>) {
        let far = Instant::now() + Duration::from_secs(3600);
        match answer {
            Err(spans) => self.back += spans.len() as u64,
            Ok(done) => match done.wait(far) {
                Some(Ok(s)) => self.durable += s.spans,
                // A failed spill hands its spans to `take_returned`.
                Some(Err(_)) => {}
                None => panic!("a spill of {n} spans was never answered"),
            },
        }
    }
}

/// A caller that spills `batches` batches of `size` spans, each counted as
/// taken from the shards first, as the spiller and the flush do.
fn caller(disk: &Arc<Disk>, books: &Arc<Books>, tag: u8, batches: usize, size: usize) -> thread::JoinHandle<Outcome> {
    let (disk, books) = (Arc::clone(disk), Arc::clone(books));
    thread::spawn(move || {
        let mut out = Outcome::default();
        for b in 0..batches {
            books.took(size as u64);
            let answer = disk.spill("svc".into(), spans(size, tag + b as u8), 1);
            out.add(size as u64, answer);
        }
        out
    })
}

/// Two callers spill while the owner, in `stop_early` schedules, stops the
/// thread meanwhile (a shutdown racing a flush); then every span is
/// accounted for, and the spool holds exactly what was answered `Ok`.
fn scenario(stop_early: bool) {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("spool");
    let spool = Spool::open(&dir, u64::MAX).expect("a new spool");
    let books = Arc::new(Books::default());
    books.opened(0);
    let disk = Arc::new(Disk::start(Ok(spool), dir.clone(), u64::MAX, 6, Arc::clone(&books)).expect("the disk thread"));
    let far = Instant::now() + Duration::from_secs(3600);
    let spiller = caller(&disk, &books, 1, 3, 2);
    let flush = caller(&disk, &books, 10, 1, 3);
    if stop_early {
        assert!(disk.stop(far), "the thread stops");
    }
    let (a, b) = (spiller.join().expect("spiller"), flush.join().expect("flush"));
    if !stop_early {
        assert_eq!(disk.wait_through(disk.mark(), far), 0, "every spill done with");
        assert!(disk.stop(far), "the thread stops");
    }
    let returned = disk.take_returned().len() as u64;
    let durable = a.durable + b.durable;
    let back = a.back + b.back + returned;
    assert_eq!(durable + back, 9, "every span is durable or back with its caller");
    let c = books.counts();
    assert_eq!((c.on_disk, c.held), (durable, back), "the books agree");
    assert_eq!(disk.queued(), 0, "nothing left queued");
    drop(disk);
    let reopened = Spool::open(&dir, u64::MAX).expect("the spool reopens");
    assert_eq!(reopened.stats().spans, durable, "what was answered Ok is on disk");
    if !stop_early {
        assert_eq!(back, 0, "a healthy disk under its bound takes everything");
    }
}

#[test]
fn spills_racing_each_other_are_all_durable() {
    crate::sync::check_random(|| scenario(false));
}

#[test]
fn spills_racing_a_stop_are_durable_or_handed_back() {
    crate::sync::check_random(|| scenario(true));
}
