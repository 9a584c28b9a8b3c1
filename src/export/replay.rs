//! Replay: the backlog back to the collector, oldest first. The memory
//! buffer goes first, then the spool's records, within the flush's
//! budgets; a record leaves the spool only once settled (delivered, or
//! refused for good and kept as a dead letter).
//!
//! Records go side by side, as many as the sender's window lets be in
//! flight (at most [`SIDE_BY_SIDE`]; one at a time under a byte allowance),
//! each in order on its own connection and settled on its own. The disk
//! thread reads the next records while these are sent. Removals are
//! pipelined: the next records are sent while the disk thread makes the
//! last ones' removals durable (one commit covers several), and at most
//! [`UNSETTLED`] records are ever sent without their removal durable, so a
//! crash repeats at most that many. A flush's replay ends only once every
//! removal it started is durable (or its deadline passed: then they
//! complete on their own). A record none of whose spans settled stays
//! first in line; the flush goes on with the records after it.
//!
//! Each settled record's pace feeds the replay rate. Once the collector
//! answers with a `Retry-After` (it sheds load and says when to come
//! back), the flush's replay ends after the records under way: the rest
//! waits for the next flush, as the collector asked, instead of pressing
//! on with the window it had. Every [`FRESH_EVERY`] the spans ended
//! meanwhile are sent first, between records and while replay waits for
//! the disk thread (a read, a removal), so a disk busy with the spiller's
//! writes does not leave them to the spiller too.

use super::disk::Done;
use super::report::SpoolFailure;
use super::{Cause, Disk, Exporter, FRESH_EVERY, FlushError, ReplayRate, Settle, Span, Stop, StoredRecord, Tree, Wait};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records sent whose removal is not yet durable, at most (the one being
/// sent included): what a crash during replay may send twice.
pub const UNSETTLED: usize = 8;

/// Records sent side by side at most (as the sender's window allows), and
/// read ahead at a time: half of [`UNSETTLED`], so that one batch is sent
/// while the removals of the last one are made durable.
const SIDE_BY_SIDE: usize = UNSETTLED / 2;

/// What a record costs of a flush's span budget: its declared spans, at
/// least one (a record whose header cannot be read still costs a turn).
fn budget_spans(entry: &StoredRecord) -> usize {
    entry.declared_spans.max(1) as usize
}

/// A record sent whose settle (or quarantine) the disk thread has not
/// answered yet.
struct Unsettled {
    done: Done<Result<(), SpoolFailure>>,
    delivered: usize,
    began: Instant,
}

/// The records a replay has in flight, oldest first, and when the last
/// one settled (the replay rate counts each stretch of time once).
#[derive(Default)]
struct Pipeline {
    unsettled: VecDeque<Unsettled>,
    last_settled: Option<Instant>,
}

/// The spans ended while a replay runs: taken every [`FRESH_EVERY`] and
/// sent first, between records and while replay waits for the disk thread,
/// so a busy disk does not leave them to the spiller.
struct Fresh<'a> {
    take: &'a mut dyn FnMut() -> Vec<Span>,
    at: Instant,
}

impl<'a> Fresh<'a> {
    fn new(take: &'a mut dyn FnMut() -> Vec<Span>) -> Self {
        Fresh {
            take,
            at: Instant::now() + FRESH_EVERY,
        }
    }
}

/// What [`Exporter::replay_next`] did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The record's key.
    pub key: u64,
    /// Spans its header declared.
    pub spans: u64,
    /// Spans the collector took.
    pub delivered: usize,
    /// Spans the collector refused for good (now dead letters).
    pub refused: usize,
    /// Why the record was quarantined instead, if it failed its checks.
    pub quarantined: Option<crate::spool::record::RecordError>,
    /// The collector's refusal, if it refused spans.
    pub refusal: Option<crate::transport::SendError>,
}

impl Exporter {
    /// Replays the memory buffer, then the spool, oldest first, within the
    /// pace's window, the time budget and the deadline; returns why it
    /// stopped early, and whether it used the whole window (so the pace may
    /// grow).
    pub(super) fn replay(
        &mut self,
        deadline: Instant,
        fresh: &mut dyn FnMut() -> Vec<Span>,
        r: &mut FlushError,
    ) -> (Option<Stop>, bool) {
        let mut budget = self.pace.window();
        let mut fresh = Fresh::new(fresh);
        let mut pipeline = Pipeline::default();
        let stopped = self.replay_records(&mut budget, deadline, &mut fresh, r, &mut pipeline);
        // Once sending stopped, fresh spans wait for the next flush.
        let fresh = if stopped.is_none() { Some(&mut fresh) } else { None };
        let settled = self.await_settles(&mut pipeline, 0, deadline, fresh, r);
        (stopped.or(settled), budget == 0)
    }

    fn replay_records(
        &mut self,
        budget: &mut usize,
        deadline: Instant,
        fresh: &mut Fresh,
        r: &mut FlushError,
        pipeline: &mut Pipeline,
    ) -> Option<Stop> {
        // Checked between records; a request in flight has the flush's.
        let budget_ends = deadline.min(Instant::now() + self.replay_budget_time);
        if let Some(stop) = self.replay_held(budget, deadline, r) {
            return Some(stop);
        }
        // At least one record per flush, however slow, so replay progresses.
        let mut replayed_any = false;
        let mut ahead = VecDeque::new();
        // The next records are read while those before them are sent.
        let (mut from, mut reading) = (0, None);
        while *budget > 0 {
            let disk = self.disk.clone()?;
            if ahead.is_empty() {
                let read = match reading.take() {
                    Some(read) => read,
                    None if !disk.has_records() => return None,
                    None => match disk.read(Tree::Queue, from, SIDE_BY_SIDE) {
                        Some(read) => read,
                        None => return Some(Stop::Deadline),
                    },
                };
                match self.wait_sending_fresh(&read, deadline, Some(&mut *fresh), r) {
                    Err(stop) => return Some(stop),
                    Ok(Some(Ok(entries))) => ahead.extend(entries),
                    Ok(Some(Err(e))) => {
                        r.because(Cause::Spool(e));
                        return None;
                    }
                    Ok(None) => return Some(Stop::Deadline),
                }
                let last = ahead.back()?;
                from = last.key.saturating_add(1);
                // Only what the flush's budget can still take past these.
                let in_hand: usize = ahead.iter().map(budget_spans).sum();
                if *budget > in_hand {
                    reading = disk.read(Tree::Queue, from, SIDE_BY_SIDE);
                }
            }
            // Side by side as the sender's window allows; one at a time
            // under a byte allowance, which is checked before each record.
            let most = match self.allowance {
                Some(_) => 1,
                None => self.sender.window().min(SIDE_BY_SIDE),
            };
            let mut batch = Vec::with_capacity(most);
            while batch.len() < most {
                // Past the first record, the rest waits for the next flush
                // once the replay's time is spent or the collector sheds
                // load and said when to come back (the request it refused
                // was sent again after its wait).
                let enough = (replayed_any || !batch.is_empty())
                    && (Instant::now() >= budget_ends || self.sender.asked_to_wait());
                if *budget == 0 || enough || !self.allowed() {
                    break;
                }
                let Some(entry) = ahead.pop_front() else { break };
                *budget = budget.saturating_sub(budget_spans(&entry));
                batch.push(entry);
            }
            if batch.is_empty() {
                return None;
            }
            replayed_any = true;
            if let Some(stop) = self.send_fresh_due(fresh, deadline, r) {
                return Some(stop);
            }
            // Room in the pipeline first: at most UNSETTLED records
            // unsettled, these included.
            if let Some(stop) = self.await_settles(pipeline, UNSETTLED - batch.len(), deadline, Some(&mut *fresh), r) {
                return Some(stop);
            }
            let wire = self.sender.bytes_sent();
            let (unsettled, stopped) = self.send_entries(&disk, batch, deadline, r);
            self.charge(wire);
            pipeline.unsettled.extend(unsettled);
            if stopped.is_some() {
                return stopped;
            }
        }
        None
    }

    /// Sends the head of the memory buffer (spans held while the spool
    /// failed, or with no spool), within `budget`; what is kept goes to disk
    /// with the rest behind it, or back to the buffer in order.
    fn replay_held(&mut self, budget: &mut usize, deadline: Instant, r: &mut FlushError) -> Option<Stop> {
        if self.retry.is_empty() || !self.allowed() {
            return None;
        }
        let n = self.retry.len().min(*budget);
        let head: Vec<Span> = self.retry.drain(..n).collect();
        *budget -= n;
        let service = Arc::clone(&self.service);
        let wire = self.sender.bytes_sent();
        let sent = self.send_held(&head, &service, deadline, r);
        self.charge(wire);
        if !sent.kept.is_empty() {
            // What was kept, then what was behind it, go to disk where
            // there is one (else back to the memory buffer, in order).
            let mut rest = sent.kept_of(&head);
            rest.append(&mut self.retry);
            self.spill_or_hold(rest, deadline, Wait::Deadline, r);
        }
        sent.stopped
    }

    /// How long until the byte allowance (`replay_max_bytes_per_s`) lets
    /// replay send again: zero when it does, or when there is none. For a
    /// caller of [`Exporter::replay_next`], which does not wait itself.
    pub fn replay_wait(&mut self) -> Duration {
        self.allowance
            .as_mut()
            .map_or(Duration::ZERO, |a| a.wait(Instant::now()))
    }

    /// Whether the byte allowance (if one is set) lets replay send now.
    fn allowed(&mut self) -> bool {
        self.allowance.as_mut().is_none_or(|a| a.may_send(Instant::now()))
    }

    /// Charges the allowance with what went on the wire since `wire`
    /// (a reading of the sender's byte count).
    fn charge(&mut self, wire: u64) {
        let spent = self.sender.bytes_sent().saturating_sub(wire);
        if let Some(a) = &mut self.allowance {
            a.spent(spent, Instant::now());
        }
    }

    /// Sends the spans ended since it last did, once [`FRESH_EVERY`] has
    /// passed; why sending stopped, if it did.
    fn send_fresh_due(&mut self, fresh: &mut Fresh, deadline: Instant, r: &mut FlushError) -> Option<Stop> {
        if Instant::now() < fresh.at {
            return None;
        }
        fresh.at = Instant::now() + FRESH_EVERY;
        self.send_fresh(&(fresh.take)(), deadline, r)
    }

    /// Waits for `done` until `deadline`, sending `fresh` spans when due
    /// meanwhile; `Err` when sending them stopped.
    fn wait_sending_fresh<T>(
        &mut self,
        done: &Done<T>,
        deadline: Instant,
        mut fresh: Option<&mut Fresh>,
        r: &mut FlushError,
    ) -> Result<Option<T>, Stop> {
        loop {
            let until = fresh.as_ref().map_or(deadline, |f| deadline.min(f.at));
            if let Some(v) = done.wait(until) {
                return Ok(Some(v));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if let Some(f) = fresh.as_deref_mut()
                && let Some(stop) = self.send_fresh_due(f, deadline, r)
            {
                return Err(stop);
            }
        }
    }

    /// Waits, until `deadline`, for the oldest settles of `pipeline` until
    /// at most `keep` remain, sending `fresh` spans when due meanwhile; a
    /// spool failure is reported and stops replay (so does the deadline,
    /// and sending fresh spans stopping).
    fn await_settles(
        &mut self,
        pipeline: &mut Pipeline,
        keep: usize,
        deadline: Instant,
        mut fresh: Option<&mut Fresh>,
        r: &mut FlushError,
    ) -> Option<Stop> {
        let mut stopped = None;
        while pipeline.unsettled.len() > keep {
            let Some(u) = pipeline.unsettled.pop_front() else { break };
            match self.wait_sending_fresh(&u.done, deadline, fresh.as_deref_mut(), r) {
                Err(stop) => {
                    // Still being written: the caller waits for it without
                    // sending.
                    pipeline.unsettled.push_front(u);
                    return Some(stop);
                }
                Ok(Some(Ok(()))) => {
                    let now = Instant::now();
                    let from = pipeline.last_settled.map_or(u.began, |last| last.max(u.began));
                    pipeline.last_settled = Some(now);
                    if u.delivered > 0 {
                        self.meter.record(u.delivered, now.duration_since(from));
                    }
                }
                Ok(Some(Err(e))) => {
                    r.because(Cause::Spool(e));
                    stopped = Some(Stop::Deadline);
                }
                // Still being written: it completes on its own.
                Ok(None) => return Some(Stop::Deadline),
            }
        }
        stopped
    }

    /// Sends spool records side by side and hands each one's settle to the
    /// disk thread without waiting (a record that failed its checks is
    /// quarantined the same way); returns what to wait for, oldest first,
    /// and why sending stopped.
    fn send_entries(
        &mut self,
        disk: &Disk,
        batch: Vec<StoredRecord>,
        deadline: Instant,
        r: &mut FlushError,
    ) -> (Vec<Unsettled>, Option<Stop>) {
        let began = Instant::now();
        // Every readable record's spans, in order.
        let parts: Vec<(&[Span], &str)> = batch
            .iter()
            .filter_map(|e| Some((e.spans.as_deref().ok()?, e.service.as_str())))
            .collect();
        let each = if parts.is_empty() {
            Vec::new()
        } else {
            self.sender.send_each(&parts, deadline, &self.books)
        };
        let mut each = each.into_iter();
        // Settles and quarantines go in the records' order: the queue
        // leaves oldest first where it can.
        let mut unsettled = Vec::with_capacity(batch.len());
        let mut stopped = None;
        for entry in batch {
            let (done, stop) = match &entry.spans {
                Ok(_) => match each.next() {
                    Some(sent) => self.settle_entry(disk, entry, sent, began, r),
                    None => (None, None),
                },
                Err(why) => {
                    r.because(Cause::Quarantined {
                        key: entry.key,
                        why: why.clone(),
                    });
                    match disk.quarantine(entry) {
                        Some(done) => (
                            Some(Unsettled {
                                done,
                                delivered: 0,
                                began,
                            }),
                            None,
                        ),
                        None => (None, Some(Stop::Deadline)),
                    }
                }
            };
            unsettled.extend(done);
            stopped = stopped.or(stop);
        }
        (unsettled, stopped)
    }

    /// Records what sending `entry` did and hands its settle to the disk
    /// thread, unless nothing settled (then the record stays first in
    /// line, with its age); what to wait for, and why sending stopped.
    fn settle_entry(
        &mut self,
        disk: &Disk,
        entry: StoredRecord,
        sent: super::send::Sent,
        began: Instant,
        r: &mut FlushError,
    ) -> (Option<Unsettled>, Option<Stop>) {
        let spans = entry.spans.as_deref().unwrap_or_default();
        if entry.tree == Tree::Queue {
            self.books
                .settled_from_spool(sent.delivered as u64, sent.oversize as u64);
        }
        r.note(&sent);
        if sent.kept_spans() == spans.len() {
            return (None, sent.stopped);
        }
        let now_unix_ms = self.clock.now_unix_ms();
        let rate = self.meter.spans_per_s().map(|spans_per_s| ReplayRate {
            spans_per_s,
            measured_unix_ms: now_unix_ms,
        });
        let delivered = sent.delivered;
        let settle = Settle {
            refused: sent.refused_of(spans),
            requeue: sent.kept_of(spans),
            counted: (sent.delivered + sent.oversize) as u64,
            now_unix_ms,
            rate,
            entry,
        };
        match disk.settle(settle) {
            Some(done) => (Some(Unsettled { done, delivered, began }), sent.stopped),
            None => (None, Some(sent.stopped.unwrap_or(Stop::Deadline))),
        }
    }

    /// Replays the oldest record of `tree`, for tools that drive replay
    /// themselves (the CLI): the queue, or the dead letters for another
    /// chance. `Ok(None)` when there is none. A record leaves only once
    /// settled (delivered or refused for good; refused spans become a new
    /// dead letter); if sending stops part-way, the unsent rest is queued
    /// again with the record's age. `Err` when the collector could not take
    /// it or the spool failed: the record stays first in line. What it put
    /// on the wire is charged to the byte allowance; the caller waits
    /// [`Exporter::replay_wait`] before the next.
    pub fn replay_next(&mut self, tree: Tree) -> Result<Option<Replayed>, Box<FlushError>> {
        let mut r = FlushError::default();
        let deadline = Instant::now() + self.flush_timeout;
        let Some(disk) = self.disk.clone() else { return Ok(None) };
        let entry = match disk.read(tree, 0, 1).and_then(|d| d.wait(deadline)) {
            Some(Ok(mut entries)) => match entries.pop() {
                Some(e) => e,
                None => return Ok(None),
            },
            Some(Err(e)) => {
                r.because(Cause::Spool(e));
                return Err(Box::new(self.report(r)));
            }
            None => {
                r.because(Cause::Deadline {
                    budget: self.flush_timeout,
                });
                return Err(Box::new(self.report(r)));
            }
        };
        let (key, spans) = (entry.key, entry.declared_spans);
        let mut pipeline = Pipeline::default();
        let wire = self.sender.bytes_sent();
        let (unsettled, stopped) = self.send_entries(&disk, vec![entry], deadline, &mut r);
        self.charge(wire);
        pipeline.unsettled.extend(unsettled);
        let settled = self.await_settles(&mut pipeline, 0, deadline, None, &mut r);
        let stopped = stopped.or(settled);
        if let Some(stop) = &stopped {
            match stop.clone() {
                Stop::Failed(e) => r.because(Cause::Collector(e)),
                Stop::Deadline => r.because(Cause::Deadline {
                    budget: self.flush_timeout,
                }),
            }
        }
        if stopped.is_some() || r.spool_failed() {
            return Err(Box::new(self.report(r)));
        }
        let quarantined = r.quarantined().next().map(|(_, why)| why.clone());
        Ok(Some(Replayed {
            key,
            spans,
            delivered: r.delivered,
            refused: r.refused,
            quarantined,
            refusal: r.cause().cloned(),
        }))
    }
}
