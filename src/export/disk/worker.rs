//! The disk thread itself: it takes jobs in rounds, performs them on the
//! spool unsynced, commits once per round, then answers every job of the
//! round; on a failure it closes the failed sled off this thread and
//! reopens the spool at the next round.

use super::{
    CLOSE_WAIT, Cause, Done, Job, Pending, ROUND_JOBS, Settle, Shared, Span, Spill, Spilled, Spool, SpoolError,
    SpoolFailure, StoredRecord, Tree, lock,
};
use crate::sync::mpsc;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The thread's own state.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) spool: Option<Spool>,
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
    /// Records settled with the collector whose removal failed with the
    /// spool: removed, without being sent again, once it reopens.
    pub(super) settled: Vec<Settle>,
    /// The failed instance being closed on a thread of its own, if any.
    pub(super) closing: Option<JoinHandle<()>>,
}

impl Worker {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut round = vec![first];
            while round.len() < ROUND_JOBS {
                match rx.try_recv() {
                    Ok(job) => round.push(job),
                    Err(_) => break,
                }
            }
            let stop = self.round(round);
            if stop {
                break;
            }
        }
        // No job is queued after this (see `Disk::send`), and whatever
        // is still queued is answered, so no waiter hangs.
        lock(&self.shared.status).stopped = true;
        self.shared.written.notify_all();
        while let Ok(job) = rx.try_recv() {
            self.refuse(job, &SpoolFailure::Closing);
        }
    }

    /// Performs one round; returns whether a stop was asked for.
    fn round(&mut self, round: Vec<Job>) -> bool {
        if self.spool.is_none() {
            self.reopen();
        }
        self.lower_ledger_for(&round);
        let mut pending = Vec::new();
        let mut stop = false;
        for job in round {
            if matches!(job, Job::Stop) {
                stop = true;
                continue;
            }
            if self.spool.is_none() {
                let why = self.problem();
                self.refuse(job, &why);
                continue;
            }
            if let Err(e) = self.perform(job, &mut pending) {
                self.fail(&e);
            }
        }
        if !pending.is_empty() {
            let committed = match &mut self.spool {
                Some(s) => s.commit(),
                None => Err(SpoolError::Missing { dir: self.dir.clone() }),
            };
            // The counts first, so whoever a job's answer wakes sees them.
            self.publish_stats();
            match committed {
                Ok(()) => pending.into_iter().for_each(|p| self.finish(p)),
                Err(e) => {
                    let why = SpoolFailure::from(e);
                    self.fail(&why);
                    pending.into_iter().for_each(|p| self.unfinish(p, &why));
                }
            }
        }
        self.publish_stats();
        stop
    }

    /// Lowers the ledger once for the queue records the round's settles
    /// remove, so the round syncs it once instead of once a record. Should
    /// that fail, each removal lowers it itself, and meets the failure.
    fn lower_ledger_for(&mut self, round: &[Job]) {
        let leaving: Vec<(u64, u64)> = round
            .iter()
            .filter_map(|job| match job {
                Job::Settle(s, _) if s.entry.tree == Tree::Queue => Some((s.entry.key, s.entry.declared_spans)),
                _ => None,
            })
            .collect();
        if let (Some(spool), false) = (&mut self.spool, leaving.is_empty()) {
            let _ = spool.lower_ledger_for(&leaving);
        }
    }

    /// Shows the spool's counts to the other threads.
    fn publish_stats(&self) {
        if let Some(s) = &self.spool {
            lock(&self.shared.status).stats = Some(s.stats());
        }
    }

    /// Performs `job` without syncing; what needs the commit goes to
    /// `pending`. `Err` when the spool failed (the job is answered).
    fn perform(&mut self, job: Job, pending: &mut Vec<Pending>) -> Result<(), SpoolFailure> {
        let Some(spool) = &mut self.spool else { return Ok(()) };
        let shared = &self.shared;
        match job {
            Job::Spill(batch, done) => return spill(spool, shared, batch, done, pending),
            Job::Dead {
                service,
                spans,
                created_unix_ms,
                done,
            } => match spool
                .room_for(spans.len() as u64 * 512)
                .and_then(|()| spool.add_dead(&service, &spans, created_unix_ms))
            {
                Ok(()) => pending.push(Pending::Dead(spans.len() as u64, done)),
                Err(e @ SpoolError::DiskFull { .. }) => {
                    shared.books.rejected(spans.len() as u64);
                    done.set(Err(e.into()));
                }
                Err(e) => {
                    shared.books.rejected(spans.len() as u64);
                    return Err(done.fail(e));
                }
            },
            Job::Read { tree, from, max, done } => match spool.oldest_from(tree, from, max) {
                Ok(entries) => done.set(Ok(entries)),
                Err(e) => return Err(done.fail(e)),
            },
            Job::Settle(settle, done) => match settle_one(spool, shared, &settle) {
                Ok(()) => pending.push(Pending::Settle(settle, done)),
                Err(e) => {
                    if settle.entry.tree == Tree::Queue {
                        self.settled.push(settle);
                    }
                    return Err(done.fail(e));
                }
            },
            Job::Quarantine { entry, done } => match spool.quarantine(&entry) {
                Ok(()) => pending.push(Pending::Quarantine(entry.declared_spans, done)),
                Err(e) => return Err(done.fail(e)),
            },
            Job::Expire {
                now_unix_ms,
                max_age_ms,
                done,
            } => match spool.expire(now_unix_ms, max_age_ms) {
                Ok(n) => pending.push(Pending::Expire(n, done)),
                Err(e) => return Err(done.fail(e)),
            },
            Job::Stop => {}
        }
        Ok(())
    }

    /// A committed job: its outcome goes into the books, then to its waiter.
    fn finish(&mut self, p: Pending) {
        let books = &self.shared.books;
        match p {
            Pending::Spill {
                oversize,
                evicted,
                batch,
                done,
            } => {
                let spans = batch.len;
                books.spilled(spans - oversize, evicted);
                books.oversize(oversize);
                self.shared.dequeue(spans);
                done.set(Ok(Spilled {
                    spans: spans - oversize,
                    evicted,
                }));
            }
            Pending::Dead(n, done) => {
                books.dead_lettered(n);
                done.set(Ok(()));
            }
            Pending::Settle(settle, done) => {
                settle.books(books);
                done.set(Ok(()));
            }
            Pending::Quarantine(n, done) => {
                books.quarantined(n);
                done.set(Ok(()));
            }
            Pending::Expire(n, done) => {
                books.expired(n);
                done.set(Ok(n));
            }
        }
    }

    /// A job whose commit failed: spans go back to memory, settled records
    /// wait for the reopen; the books learn at the reopen what reached the
    /// disk.
    fn unfinish(&mut self, p: Pending, why: &SpoolFailure) {
        match p {
            Pending::Spill {
                evicted, batch, done, ..
            } => {
                self.shared.books.spilled(0, evicted);
                self.shared.return_spill(batch);
                done.set(Err(why.clone()));
            }
            Pending::Dead(n, done) => {
                self.shared.books.rejected(n);
                done.set(Err(why.clone()));
            }
            Pending::Settle(settle, done) => {
                if settle.entry.tree == Tree::Queue {
                    self.settled.push(settle);
                }
                done.set(Err(why.clone()));
            }
            Pending::Quarantine(_, done) => done.set(Err(why.clone())),
            Pending::Expire(_, done) => done.set(Err(why.clone())),
        }
    }

    /// Answers `job` without performing it.
    fn refuse(&mut self, job: Job, why: &SpoolFailure) {
        match job {
            Job::Spill(batch, done) => {
                self.shared.return_spill(batch);
                done.set(Err(why.clone()));
            }
            Job::Dead { spans, done, .. } => {
                self.shared.books.rejected(spans.len() as u64);
                done.set(Err(why.clone()));
            }
            Job::Read { done, .. } => done.set(Err(why.clone())),
            Job::Settle(settle, done) => {
                if settle.entry.tree == Tree::Queue {
                    self.settled.push(settle);
                }
                done.set(Err(why.clone()));
            }
            Job::Quarantine { done, .. } => done.set(Err(why.clone())),
            Job::Expire { done, .. } => done.set(Err(why.clone())),
            Job::Stop => {}
        }
    }

    fn problem(&self) -> SpoolFailure {
        lock(&self.shared.status)
            .problem
            .clone()
            .unwrap_or(SpoolFailure::NotOpen)
    }

    /// The spool failed: close it off this thread and remember why.
    fn fail(&mut self, e: &SpoolFailure) {
        lock(&self.shared.status).problem = Some(e.clone());
        if let Some(failed) = self.spool.take() {
            self.closing = close_elsewhere(failed);
        }
    }

    /// Opens the spool again after a failure, once the failed instance has
    /// let go of it (sled holds its lock until then).
    fn reopen(&mut self) {
        if let Some(closing) = self.closing.take() {
            let deadline = Instant::now() + CLOSE_WAIT;
            while !closing.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if !closing.is_finished() {
                self.closing = Some(closing);
                lock(&self.shared.status).problem = Some(SpoolFailure::StillClosing);
                return;
            }
        }
        let mut spool = match Spool::open_with(&self.dir, self.max_bytes, Duration::ZERO) {
            Ok(s) => s,
            Err(e) => {
                lock(&self.shared.status).problem = Some(SpoolFailure::Reopening(Arc::new(e)));
                return;
            }
        };
        // A loss found here shows as fewer spans than the books counted.
        let mut causes = spool.take_damage().map_or_else(Vec::new, |d| Cause::of_damage(&d));
        if let Err(e) = self.remove_settled(&mut spool) {
            lock(&self.shared.status).problem = Some(SpoolFailure::Reopening(Arc::new(e)));
            self.closing = close_elsewhere(spool);
            return;
        }
        let lost = self.shared.books.opened(spool.stats().spans);
        if lost > 0 {
            causes.push(Cause::LostOnReopen(lost));
        }
        let mut st = lock(&self.shared.status);
        st.problem = None;
        st.causes.extend(causes);
        st.stats = Some(spool.stats());
        drop(st);
        self.spool = Some(spool);
    }

    /// Removes from the reopened `spool` the records settled before it
    /// failed, without sending them again; their outcome goes into the
    /// books whether this removes them or an earlier removal had reached
    /// the disk after all. If any step fails (`get`, the requeue, the dead
    /// letter or the commit), every one of them stays in `self.settled` for
    /// the next reopen: a removal is idempotent (a record found gone is not
    /// removed twice), and none is counted before the commit that covers it.
    /// The unsent rest is queued before the record is removed, so a failure
    /// between the two can queue it twice (a duplicate, counted as recovered
    /// at the next open), never lose it.
    fn remove_settled(&mut self, spool: &mut impl Removals) -> Result<(), SpoolError> {
        let result = Self::remove_each(&self.settled, spool).and_then(|()| spool.commit());
        if result.is_ok() {
            for s in std::mem::take(&mut self.settled) {
                s.books(&self.shared.books);
            }
        }
        result
    }

    /// Performs the removals of `settled` on `spool`, unsynced.
    fn remove_each(settled: &[Settle], spool: &mut impl Removals) -> Result<(), SpoolError> {
        for s in settled {
            let e = &s.entry;
            let found = spool.get(Tree::Queue, e.key)?;
            if found.is_some_and(|f| (f.created_unix_ms, f.declared_spans) == (e.created_unix_ms, e.declared_spans)) {
                spool.append(&e.service, &s.requeue, e.created_unix_ms)?;
                spool.dead_letter(e, &s.refused, s.now_unix_ms)?;
            }
        }
        Ok(())
    }
}

/// The spool calls a recovery's removals make ([`Worker::remove_settled`]),
/// so a test can fail each in turn.
pub(super) trait Removals {
    fn get(&self, tree: Tree, key: u64) -> Result<Option<StoredRecord>, SpoolError>;
    fn dead_letter(&mut self, entry: &StoredRecord, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError>;
    fn append(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError>;
    fn commit(&mut self) -> Result<(), SpoolError>;
}

impl Removals for Spool {
    fn get(&self, tree: Tree, key: u64) -> Result<Option<StoredRecord>, SpoolError> {
        Spool::get(self, tree, key)
    }
    fn dead_letter(&mut self, entry: &StoredRecord, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
        Spool::dead_letter(self, entry, refused, now_unix_ms)
    }
    fn append(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
        Spool::append(self, service, spans, created_unix_ms)
    }
    fn commit(&mut self) -> Result<(), SpoolError> {
        Spool::commit(self)
    }
}

/// Appends a spill job's batch if the filesystem has room; a full disk
/// refuses it before sled sees it (the spans go back to the flush, the
/// spool is fine), any other failure is the spool's.
fn spill(
    spool: &mut Spool,
    shared: &Shared,
    job: Spill,
    done: Done<Result<Spilled, SpoolFailure>>,
    pending: &mut Vec<Pending>,
) -> Result<(), SpoolFailure> {
    let oversize = job.prepared.oversize();
    let appended = spool
        .room_for(job.prepared.bytes())
        .and_then(|()| spool.append_prepared(&job.prepared));
    match appended {
        Err(e @ SpoolError::DiskFull { .. }) => {
            shared.return_spill(job);
            let f = SpoolFailure::from(e);
            lock(&shared.status).causes.push(Cause::Spool(f.clone()));
            done.set(Err(f));
            Ok(())
        }
        Ok(evicted) => {
            pending.push(Pending::Spill {
                oversize,
                evicted,
                batch: job,
                done,
            });
            Ok(())
        }
        Err(e) => {
            // Room made before the failure stays made: count it.
            shared.books.spilled(0, spool.take_dropped());
            shared.return_spill(job);
            Err(done.fail(e))
        }
    }
}

/// Settles a record: queues its unsent rest, then removes it (dead
/// letters for the refused). The rest first: a failure between them can
/// queue the rest twice, never lose it.
fn settle_one(spool: &mut Spool, shared: &Shared, settle: &Settle) -> Result<(), SpoolError> {
    if let Some(rate) = settle.rate {
        spool.note_replay_rate(rate);
    }
    let e = &settle.entry;
    let evicted = spool.append(&e.service, &settle.requeue, e.created_unix_ms)?;
    shared.books.spilled(0, evicted);
    spool.dead_letter(e, &settle.refused, settle.now_unix_ms)
}

/// Drops a failed spool on a thread of its own: sled may wait for ever to
/// flush a failed disk while it closes, and holds its lock until it has.
pub(super) fn close_elsewhere(spool: Spool) -> Option<JoinHandle<()>> {
    // Without a thread to spare the spool is leaked (ManuallyDrop), never
    // dropped here.
    let spool = std::mem::ManuallyDrop::new(spool);
    std::thread::Builder::new()
        .name("spillway-close".into())
        .spawn(move || drop(std::mem::ManuallyDrop::into_inner(spool)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::{Books, Status};
    use super::*;
    use crate::sync::{Condvar, Mutex};

    /// The real spool, with the `fail_at`th removal call (from 0) failing.
    struct Failing<'a> {
        spool: &'a mut Spool,
        fail_at: usize,
        calls: std::cell::Cell<usize>,
    }

    impl Failing<'_> {
        fn step(&self) -> Result<(), SpoolError> {
            let n = self.calls.get();
            self.calls.set(n + 1);
            if n == self.fail_at {
                return Err(SpoolError::Missing {
                    dir: PathBuf::from("injected"),
                });
            }
            Ok(())
        }
    }

    impl Removals for Failing<'_> {
        fn get(&self, tree: Tree, key: u64) -> Result<Option<StoredRecord>, SpoolError> {
            self.step()?;
            self.spool.get(tree, key)
        }
        fn dead_letter(&mut self, entry: &StoredRecord, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
            self.step()?;
            self.spool.dead_letter(entry, refused, now_unix_ms)
        }
        fn append(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
            self.step()?;
            Removals::append(self.spool, service, spans, created_unix_ms)
        }
        fn commit(&mut self) -> Result<(), SpoolError> {
            self.step()?;
            self.spool.commit()
        }
    }

    fn spans(n: usize, tag: u8) -> Vec<Span> {
        (0..n)
            .map(|i| Span::new([tag; 16], (i as u64 + 1).to_be_bytes(), "s"))
            .collect()
    }

    /// Two records settled with the collector (the first with two spans
    /// refused, the second with three not sent), waiting for a reopen.
    fn recovering(dir: &std::path::Path) -> (Spool, Worker) {
        let mut spool = Spool::open(dir, u64::MAX).unwrap();
        spool.push("svc", &spans(10, 1), 1).unwrap();
        spool.push("svc", &spans(10, 2), 2).unwrap();
        let books = Arc::new(Books::default());
        books.opened(20);
        let entries = spool.oldest(Tree::Queue, 2).unwrap();
        let settled = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let all = entry.spans.clone().unwrap();
                let (refused, requeue) = if i == 0 {
                    (all[..2].to_vec(), Vec::new())
                } else {
                    (Vec::new(), all[7..].to_vec())
                };
                let counted = (10 - refused.len() - requeue.len()) as u64;
                books.settled_from_spool(counted, 0);
                Settle {
                    entry,
                    refused,
                    requeue,
                    counted,
                    now_unix_ms: 3,
                    rate: None,
                }
            })
            .collect();
        let worker = Worker {
            shared: Arc::new(Shared {
                books,
                returned: Mutex::new(Vec::new()),
                status: Mutex::new(Status::default()),
                written: Condvar::new(),
                max_queued: 1,
            }),
            spool: None,
            dir: dir.to_path_buf(),
            max_bytes: u64::MAX,
            settled,
            closing: None,
        };
        (spool, worker)
    }

    #[test]
    fn a_round_of_settles_syncs_the_ledger_once_to_lower_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), u64::MAX).unwrap();
        for tag in 1..=3 {
            spool.push("svc", &spans(10, tag), 1).unwrap();
        }
        spool.commit().unwrap();
        let entries = spool.oldest(Tree::Queue, 3).unwrap();
        let books = Arc::new(Books::default());
        books.opened(30);
        // Each write of the ledger takes the next generation (u32 LE after
        // the magic), in one of its two 44-byte slots.
        let ledger = dir.path().join(crate::spool::ledger::FILE);
        let generation = || {
            let b = std::fs::read(&ledger).unwrap();
            [4, 48]
                .map(|at| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
                .into_iter()
                .max()
        };
        let mut worker = Worker {
            shared: Arc::new(Shared {
                books: Arc::clone(&books),
                returned: Mutex::new(Vec::new()),
                status: Mutex::new(Status::default()),
                written: Condvar::new(),
                max_queued: 1,
            }),
            spool: Some(spool),
            dir: dir.path().to_path_buf(),
            max_bytes: u64::MAX,
            settled: Vec::new(),
            closing: None,
        };
        let before = generation().unwrap();
        let mut dones = Vec::new();
        let jobs = entries
            .into_iter()
            .map(|entry| {
                books.settled_from_spool(10, 0);
                let done = Done::new();
                dones.push(done.clone());
                let settle = Settle {
                    entry,
                    refused: Vec::new(),
                    requeue: Vec::new(),
                    counted: 10,
                    now_unix_ms: 3,
                    rate: None,
                };
                Job::Settle(settle, done)
            })
            .collect();
        assert!(!worker.round(jobs));
        assert!(dones.iter().all(|d| matches!(d.wait(Instant::now()), Some(Ok(())))));
        assert_eq!(worker.spool.as_ref().unwrap().stats().records, 0);
        // Lowered once for the three removals, raised once by the commit.
        assert_eq!(generation(), Some(before + 2));
    }

    #[test]
    fn a_recovery_failing_at_any_step_forgets_no_settle_and_removes_each_once() {
        // get, dead letter, requeue for each record, then the commit.
        const CALLS: usize = 2 * 3 + 1;
        for fail_at in 0..CALLS {
            let dir = tempfile::tempdir().unwrap();
            let (mut spool, mut worker) = recovering(dir.path());
            let before = worker.shared.books.counts();
            let mut failing = Failing {
                spool: &mut spool,
                fail_at,
                calls: std::cell::Cell::new(0),
            };
            assert!(worker.remove_settled(&mut failing).is_err(), "call {fail_at}");
            assert_eq!(worker.settled.len(), 2, "call {fail_at}: a settle was forgotten");
            assert_eq!(
                worker.shared.books.counts(),
                before,
                "call {fail_at}: counted before the commit"
            );
            // The next reopen works: each record leaves once, its refused
            // spans are one dead letter, and its unsent rest is queued (twice
            // at most: when the failure came between requeue and removal).
            worker.remove_settled(&mut spool).unwrap();
            assert!(worker.settled.is_empty());
            let st = spool.stats();
            let twice = fail_at == 5;
            assert_eq!(
                (st.records, st.spans, st.dead_letter_spans),
                (1 + u64::from(twice), 3 + 3 * u64::from(twice), 2),
                "call {fail_at}: {st:?}"
            );
            let queued: std::collections::BTreeSet<[u8; 8]> = spool
                .oldest(Tree::Queue, 2)
                .unwrap()
                .into_iter()
                .flat_map(|r| r.spans.unwrap())
                .map(|s| s.span_id)
                .collect();
            let unsent: std::collections::BTreeSet<[u8; 8]> = spans(10, 2)[7..].iter().map(|s| s.span_id).collect();
            assert_eq!(queued, unsent, "call {fail_at}: the unsent rest is queued");
            let c = worker.shared.books.counts();
            assert_eq!((c.on_disk, c.settling), (3, 0), "call {fail_at}: {c:?}");
        }
    }
}
