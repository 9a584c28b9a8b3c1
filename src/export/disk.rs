//! The disk thread: the one place where sled is called, so that no call
//! that can block without bound (sled waits on its IO buffers, a full or
//! hanging disk) ever runs on bext's flush thread or the spiller.
//!
//! The flush and the spiller hand the thread jobs (spill these spans, read
//! the oldest records, settle a record the collector took, quarantine,
//! expire) and wait for each as long as their own deadline allows; a job
//! they stopped waiting for still completes. Outcomes are recorded in the
//! [`Books`] here, once, when the job is durable, whoever waited for it, so
//! the accounting holds at every moment a round is not running.
//!
//! ## Rounds (group commit)
//! The thread takes every job queued (up to [`ROUND_JOBS`]), performs them
//! in order without syncing, then commits once ([`Spool::commit`]): one
//! sync covers every spill of the round, the flush's and the spiller's
//! alike, and no job is reported done before the sync that covers it
//! returned. Reads complete at once.
//!
//! ## Failures
//! When the spool fails (I/O error, full disk), the failed sled instance is
//! closed on a thread of its own (sled can wait for ever while it closes on
//! a failed disk, and this thread must stay responsive); spans of failed
//! spills are returned ([`Disk::take_returned`]) for the flush to hold
//! in memory; records the collector settled but whose removal failed are
//! kept and removed, without being sent again, once the spool reopens. The
//! thread tries to reopen the spool at the start of every round while it
//! is failed (so at most once per flush and per early spill) and compares
//! what it finds with the books: more is counted as recovered (a write
//! that did land: a possible duplicate), fewer as lost.
//!
//! ## Bounds
//! Jobs queued but not done hold at most `max_queued` spans, as their
//! records' bytes (the spans themselves only where the encoding left
//! some out as oversize; see `Spill`): past that,
//! [`Disk::spill`] hands the spans back at once (the disk is not keeping
//! up, or hangs) and the caller holds them in memory, bounded there.

use super::books::Books;
use super::report::{Cause, SpoolFailure};
use crate::span::Span;
use crate::span::packed::Run;
use crate::spool::state::ReplayRate;
use crate::spool::{Prepared, Spool, SpoolError, SpoolStats, StoredRecord, Tree};
use crate::sync::{Condvar, Mutex, MutexGuard, mpsc, thread};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(all(test, feature = "model"))]
mod model;
mod worker;

use worker::Worker;

/// The most jobs one round takes.
pub(crate) const ROUND_JOBS: usize = 256;
/// How long a reopen waits for a failed instance to finish closing.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A job's result, set once by the disk thread, awaited with a deadline.
pub struct Done<T>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T> Clone for Done<T> {
    fn clone(&self) -> Self {
        Done(Arc::clone(&self.0))
    }
}

impl<T> Done<T> {
    fn new() -> Done<T> {
        Done(Arc::new((Mutex::new(None), Condvar::new())))
    }

    fn set(&self, value: T) {
        *lock(&self.0.0) = Some(value);
        self.0.1.notify_all();
    }

    /// The result, waiting until `deadline` at most; `None` if the job was
    /// not done by then (it still completes).
    pub fn wait(&self, deadline: Instant) -> Option<T> {
        let (slot, cond) = &*self.0;
        let mut guard = lock(slot);
        loop {
            if let Some(v) = guard.take() {
                return Some(v);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())?;
            guard = cond.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl<T> Done<Result<T, SpoolFailure>> {
    /// Answers with the spool's failure `e`, and returns it.
    fn fail(&self, e: SpoolError) -> SpoolFailure {
        let f = SpoolFailure::from(e);
        self.set(Err(f.clone()));
        f
    }
}

/// What a spill did, once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spilled {
    /// Spans written.
    pub spans: u64,
    /// Older spans the spool's cap dropped to make room.
    pub evicted: u64,
}

enum Job {
    Spill(Spill, Done<Result<Spilled, SpoolFailure>>),
    Dead {
        service: Arc<str>,
        spans: Vec<Span>,
        created_unix_ms: u64,
        done: Done<Result<(), SpoolFailure>>,
    },
    Read {
        tree: Tree,
        from: u64,
        max: usize,
        done: Done<Result<Vec<StoredRecord>, SpoolFailure>>,
    },
    Settle(Settle, Done<Result<(), SpoolFailure>>),
    Quarantine {
        entry: StoredRecord,
        done: Done<Result<(), SpoolFailure>>,
    },
    Expire {
        now_unix_ms: u64,
        max_age_ms: u64,
        done: Done<Result<u64, SpoolFailure>>,
    },
    Stop,
}

/// A batch to spill, encoded on the caller's thread. Only the records'
/// bytes wait in the queue and for the commit (a tenth of the spans'
/// memory or less); the spans themselves are kept only when the encoding
/// left some out as oversize, so that a spill that fails hands back every
/// span it was given.
struct Spill {
    /// How many spans it was given.
    len: u64,
    prepared: Prepared,
    /// The spans, when some were too large for a record.
    kept: Option<Vec<Span>>,
}

impl Spill {
    fn new(service: Arc<str>, spans: Vec<Span>, created_unix_ms: u64) -> Spill {
        let prepared = crate::spool::prepare(&service, &spans, created_unix_ms);
        Spill {
            len: spans.len() as u64,
            kept: (prepared.oversize() > 0).then_some(spans),
            prepared,
        }
    }

    /// The spill of a run of packed spans, encoded without unpacking them
    /// (but when some are too large for a record: then they are kept
    /// unpacked, and those that would not unpack counted as lost).
    fn packed(service: Arc<str>, run: &Run, created_unix_ms: u64, books: &Books) -> Spill {
        let prepared = crate::spool::prepare_run(&service, run, created_unix_ms);
        let kept = (prepared.oversize() > 0).then(|| {
            let (spans, lost) = run.unpack();
            if lost > 0 {
                books.lost_in_memory(lost);
            }
            spans
        });
        Spill {
            len: kept.as_ref().map_or(run.len(), Vec::len) as u64,
            prepared,
            kept,
        }
    }

    /// The spans back, kept or decoded from the records; those a record
    /// that would not decode held are counted as lost (`corrupt`).
    fn into_spans(self, books: &Books) -> Vec<Span> {
        if let Some(spans) = self.kept {
            return spans;
        }
        let (spans, lost) = self.prepared.spans();
        if lost > 0 {
            books.lost_in_memory(lost);
        }
        spans
    }
}

/// A spool record the collector settled: remove it, keep `refused` as a
/// dead letter and queue `requeue` (the unsent rest) again with its age.
pub struct Settle {
    /// The record.
    pub entry: StoredRecord,
    /// Its spans refused for good.
    pub refused: Vec<Span>,
    /// Its spans not sent (sending stopped part-way).
    pub requeue: Vec<Span>,
    /// Its spans already counted as settled (delivered or oversize).
    pub counted: u64,
    /// Now, for the dead letter's age.
    pub now_unix_ms: u64,
    /// The replay rate measured so far, to keep with the commit.
    pub rate: Option<ReplayRate>,
}

impl Settle {
    fn books(&self, books: &Books) {
        if self.entry.tree == Tree::Queue {
            books.settled(
                self.entry.declared_spans,
                self.counted,
                self.refused.len() as u64,
                self.requeue.len() as u64,
            );
        }
    }
}

/// What waits for a round's commit.
enum Pending {
    /// The batch written, of which `oversize` spans were left out as too
    /// large for a record; `evicted` dropped to make room; the batch is
    /// kept to hand back if the commit fails.
    Spill {
        oversize: u64,
        evicted: u64,
        batch: Spill,
        done: Done<Result<Spilled, SpoolFailure>>,
    },
    Dead(u64, Done<Result<(), SpoolFailure>>),
    Settle(Settle, Done<Result<(), SpoolFailure>>),
    Quarantine(u64, Done<Result<(), SpoolFailure>>),
    Expire(u64, Done<Result<u64, SpoolFailure>>),
}

/// What the thread shares with the flush and the spiller.
struct Shared {
    books: Arc<Books>,
    /// Spans of failed spills, for the flush to hold in memory.
    returned: Mutex<Vec<Span>>,
    status: Mutex<Status>,
    /// Notified whenever spill jobs are done with (`Status::queued` fell)
    /// and when the thread stops.
    written: Condvar,
    max_queued: u64,
}

#[derive(Default)]
struct Status {
    /// The spool's counts after the last round.
    stats: Option<SpoolStats>,
    /// Why the spool is not working, while it is not.
    problem: Option<SpoolFailure>,
    /// What the next flush should report.
    causes: Vec<Cause>,
    /// Spans in spill jobs not done yet.
    queued: u64,
    /// Spans ever put in spill jobs, and ever done with (written or handed
    /// back): a mark of the first is reached once the second catches up.
    enqueued_total: u64,
    dequeued_total: u64,
    /// The thread takes no more jobs: it answers those still queued and
    /// ends.
    stopped: bool,
}

/// The disk thread and its job queue; see the module docs.
pub struct Disk {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    dir: PathBuf,
}

impl Disk {
    /// Starts the thread over `spool` (or over none yet, when it could not
    /// be opened: `problem` says why, and the thread keeps trying to open
    /// the spool in `dir`). Jobs queued hold at most `max_queued` spans.
    pub fn start(
        spool: Result<Spool, SpoolError>,
        dir: PathBuf,
        max_bytes: u64,
        max_queued: u64,
        books: Arc<Books>,
    ) -> std::io::Result<Disk> {
        let (tx, rx) = mpsc::channel();
        let mut status = Status::default();
        let spool = match spool {
            Ok(s) => {
                status.stats = Some(s.stats());
                Some(s)
            }
            Err(problem) => {
                status.problem = Some(problem.into());
                None
            }
        };
        let shared = Arc::new(Shared {
            books,
            returned: Mutex::new(Vec::new()),
            status: Mutex::new(status),
            written: Condvar::new(),
            max_queued: max_queued.max(1),
        });
        let worker = Worker {
            shared: Arc::clone(&shared),
            spool,
            dir: dir.clone(),
            max_bytes,
            settled: Vec::new(),
            closing: None,
        };
        let thread = thread::Builder::new()
            .name("spillway-disk".into())
            .spawn(move || worker.run(rx))?;
        Ok(Disk {
            jobs: tx,
            shared,
            thread: Mutex::new(Some(thread)),
            dir,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Queues `job`, or hands it back if the thread takes no more jobs.
    /// The send happens under the status lock, so a job is either refused
    /// here or queued before the thread's last drain, which begins only
    /// after it marked itself stopped: no job is dropped unanswered.
    fn send(&self, job: Job) -> Result<(), Box<Job>> {
        let st = lock(&self.shared.status);
        if st.stopped {
            return Err(Box::new(job));
        }
        self.jobs.send(job).map_err(|mpsc::SendError(job)| Box::new(job))
    }

    /// Queues `spans` to be spilled; `Err` hands them back at once when the
    /// disk thread already holds `max_queued` spans or has stopped. The
    /// spans are encoded as records here, on the caller's thread, so the
    /// disk thread only writes.
    pub fn spill(
        &self,
        service: Arc<str>,
        spans: Vec<Span>,
        created_unix_ms: u64,
    ) -> Result<Done<Result<Spilled, SpoolFailure>>, Vec<Span>> {
        let n = spans.len() as u64;
        if !self.reserve(n) {
            return Err(spans);
        }
        self.queue(Spill::new(service, spans, created_unix_ms), n)
    }

    /// [`Disk::spill`] of the packed spans in `run`, encoded without
    /// unpacking them; `Err(None)` leaves them in `run` (the disk thread
    /// holds `max_queued` spans), `Err(Some(spans))` hands them back
    /// unpacked (the thread has stopped). `run` is left as it was.
    pub(crate) fn spill_run(
        &self,
        service: Arc<str>,
        run: &Run,
        created_unix_ms: u64,
    ) -> Result<Done<Result<Spilled, SpoolFailure>>, Option<Vec<Span>>> {
        let n = run.len() as u64;
        if !self.reserve(n) {
            return Err(None);
        }
        let spill = Spill::packed(service, run, created_unix_ms, &self.shared.books);
        self.queue(spill, n).map_err(Some)
    }

    /// Counts `n` spans as queued if they may queue (none waiting, or
    /// within `max_queued`), in one step, so that two spills racing cannot
    /// both pass the check; before the spans are encoded, so a refused
    /// batch costs no encoding.
    fn reserve(&self, n: u64) -> bool {
        let mut st = lock(&self.shared.status);
        if st.queued > 0 && st.queued + n > self.shared.max_queued {
            return false;
        }
        st.queued += n;
        st.enqueued_total += n;
        true
    }

    /// Queues `spill`, for which `reserved` spans were counted as queued
    /// (its own count replaces them), until the disk thread answers; `Err`
    /// hands its spans back (the thread has stopped).
    fn queue(&self, spill: Spill, reserved: u64) -> Result<Done<Result<Spilled, SpoolFailure>>, Vec<Span>> {
        let n = spill.len;
        {
            let mut st = lock(&self.shared.status);
            st.queued = st.queued - reserved + n;
            st.enqueued_total = st.enqueued_total - reserved + n;
        }
        let done = Done::new();
        if n == 0 {
            done.set(Ok(Spilled { spans: 0, evicted: 0 }));
            return Ok(done);
        }
        if let Err(job) = self.send(Job::Spill(spill, done.clone()))
            && let Job::Spill(spill, _) = *job
        {
            {
                let mut st = lock(&self.shared.status);
                st.queued -= n;
                st.enqueued_total -= n;
            }
            return Err(spill.into_spans(&self.shared.books));
        }
        Ok(done)
    }

    /// Queues refused `spans` to be kept as dead letters; `Err` if the
    /// thread has stopped (the caller counts them as rejected).
    pub fn dead(
        &self,
        service: Arc<str>,
        spans: Vec<Span>,
        created_unix_ms: u64,
    ) -> Option<Done<Result<(), SpoolFailure>>> {
        let done = Done::new();
        let job = Job::Dead {
            service,
            spans,
            created_unix_ms,
            done: done.clone(),
        };
        self.send(job).is_ok().then_some(done)
    }

    /// Reads up to `max` of the oldest records of `tree` whose key is at
    /// least `from`.
    pub fn read(&self, tree: Tree, from: u64, max: usize) -> Option<Done<Result<Vec<StoredRecord>, SpoolFailure>>> {
        let done = Done::new();
        self.send(Job::Read {
            tree,
            from,
            max,
            done: done.clone(),
        })
        .is_ok()
        .then_some(done)
    }

    /// Settles a record (see `Settle`).
    pub fn settle(&self, settle: Settle) -> Option<Done<Result<(), SpoolFailure>>> {
        let done = Done::new();
        self.send(Job::Settle(settle, done.clone())).is_ok().then_some(done)
    }

    /// Quarantines a record that failed its checks.
    pub fn quarantine(&self, entry: StoredRecord) -> Option<Done<Result<(), SpoolFailure>>> {
        let done = Done::new();
        self.send(Job::Quarantine {
            entry,
            done: done.clone(),
        })
        .is_ok()
        .then_some(done)
    }

    /// Drops records older than `max_age_ms`.
    pub fn expire(&self, now_unix_ms: u64, max_age_ms: u64) -> Option<Done<Result<u64, SpoolFailure>>> {
        let done = Done::new();
        self.send(Job::Expire {
            now_unix_ms,
            max_age_ms,
            done: done.clone(),
        })
        .is_ok()
        .then_some(done)
    }

    /// Returns spans to be held in memory (a spill that could not be
    /// queued); the next flush takes them.
    pub fn return_spans(&self, mut spans: Vec<Span>) {
        lock(&self.shared.returned).append(&mut spans);
    }

    /// Spans returned by failed spills, oldest first (still counted as
    /// held).
    pub fn take_returned(&self) -> Vec<Span> {
        std::mem::take(&mut *lock(&self.shared.returned))
    }

    /// What happened on disk that no flush has reported yet.
    pub fn take_causes(&self) -> Vec<Cause> {
        std::mem::take(&mut lock(&self.shared.status).causes)
    }

    /// Why the spool is not working, if it is not (as of the last round).
    pub fn problem(&self) -> Option<SpoolFailure> {
        lock(&self.shared.status).problem.clone()
    }

    /// Adds something for the next flush to report.
    pub fn add_cause(&self, cause: Cause) {
        lock(&self.shared.status).causes.push(cause);
    }

    /// The spool's counts after the last round, if it has been open.
    pub fn stats(&self) -> Option<SpoolStats> {
        lock(&self.shared.status).stats
    }

    /// Whether the queue holds records (as of the last round).
    pub fn has_records(&self) -> bool {
        lock(&self.shared.status).stats.is_some_and(|s| s.records > 0)
    }

    /// Whether the spool works (as of the last round).
    pub fn is_working(&self) -> bool {
        lock(&self.shared.status).problem.is_none()
    }

    /// Spans queued and not yet written.
    pub fn queued(&self) -> u64 {
        lock(&self.shared.status).queued
    }

    /// Waits until every spill job queued so far is done with (durable, or
    /// its spans returned), until `deadline` at most; returns whether
    /// none is left.
    pub fn wait_written(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |st| st.queued == 0).queued == 0
    }

    /// Waits until `done` holds of the status, or `deadline`; returns the
    /// status as it is then.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&Status) -> bool) -> MutexGuard<'_, Status> {
        let mut st = lock(&self.shared.status);
        while !done(&st) {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            st = self
                .shared
                .written
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }

    /// A mark of every spill job queued so far, for [`Disk::wait_through`].
    pub fn mark(&self) -> u64 {
        lock(&self.shared.status).enqueued_total
    }

    /// Waits until the spill jobs queued before `mark` are done with
    /// (durable, or returned), until `deadline` at most; returns how many
    /// of their spans are not yet (jobs queued after the mark, such as the
    /// spiller's next, are not waited for). Jobs finish in the order they
    /// were queued, but for a spill refused as too large for the disk,
    /// which is returned at once: then the count is a lower bound.
    pub fn wait_through(&self, mark: u64, deadline: Instant) -> u64 {
        let st = self.wait_until(deadline, |st| st.dequeued_total >= mark);
        mark.saturating_sub(st.dequeued_total)
    }

    /// Stops the thread once the jobs queued are done, waiting until
    /// `deadline` at most; returns whether it stopped in time (if not, it
    /// stops on its own later and the spans it still holds stay counted
    /// as in memory).
    pub fn stop(&self, deadline: Instant) -> bool {
        let _ = self.jobs.send(Job::Stop);
        let Some(thread) = lock(&self.thread).take() else {
            return true;
        };
        if !self.wait_until(deadline, |st| st.stopped).stopped {
            // Detached: it ends on its own.
            return false;
        }
        let _ = thread.join();
        true
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
    }
}

impl Shared {
    /// `n` spans of a spill job are done with (written or returned).
    fn dequeue(&self, n: u64) {
        let mut st = lock(&self.status);
        st.queued = st.queued.saturating_sub(n);
        st.dequeued_total += n;
        self.written.notify_all();
    }

    /// The spans of a spill that failed or was refused go back to memory
    /// (kept, or decoded from its records): in `returned` before they
    /// leave the queued count, so a waiter woken by that finds them.
    fn return_spill(&self, batch: Spill) {
        let n = batch.len;
        let spans = batch.into_spans(&self.books);
        lock(&self.returned).extend(spans);
        self.dequeue(n);
    }
}
