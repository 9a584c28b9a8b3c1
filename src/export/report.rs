//! The flush report: what one flush did with its spans (counts) and why it
//! did not deliver everything (causes), in words an operator can act on.
//!
//! Counts and causes are kept apart: counts are added to, causes are a list
//! that every step appends to and nothing overwrites, so a damage note, a
//! spool failure and the collector's answer all reach the message.

use crate::spool::record::RecordError;
use crate::spool::{Damage, SpoolError};
use crate::transport::{Class, SendError};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why the spool did not do what was asked of it, typed and cheap to
/// clone (one failure reaches every job it fails and the flush report).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolFailure {
    /// What the spool said.
    #[error("{0}")]
    Spool(Arc<SpoolError>),
    /// Reopening the spool after a failure failed too.
    #[error("reopening after a failure: {0}")]
    Reopening(Arc<SpoolError>),
    /// The failed spool has not let go of its files yet.
    #[error("the failed spool is still closing (sled is waiting on the disk); restart the process if this lasts")]
    StillClosing,
    /// The spool is not open (it failed, and is not reopened yet).
    #[error("the spool is not open")]
    NotOpen,
    /// The spool is closing (the tracer is being dropped).
    #[error("the spool is closing")]
    Closing,
}

impl SpoolFailure {
    /// The spool's own error, if it said one.
    pub fn error(&self) -> Option<&SpoolError> {
        match self {
            SpoolFailure::Spool(e) | SpoolFailure::Reopening(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the spool refused for want of room on its filesystem.
    pub fn is_disk_full(&self) -> bool {
        matches!(self.error(), Some(SpoolError::DiskFull { .. }))
    }
}

impl From<SpoolError> for SpoolFailure {
    fn from(e: SpoolError) -> Self {
        SpoolFailure::Spool(Arc::new(e))
    }
}

/// Two failures are the same when they say the same (a report lists each
/// once); the errors inside are not comparable themselves.
impl PartialEq for SpoolFailure {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.to_string() == other.to_string()
    }
}

impl Eq for SpoolFailure {}

/// Why a flush did not deliver everything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The collector failed a request (the last such failure of the flush).
    Collector(SendError),
    /// No request was made: the exporter is backing off after failures.
    BackingOff {
        /// The failure that started the wait, if the collector reported one.
        last: Option<SendError>,
    },
    /// The flush ran out of time (`flush_timeout_ms`) with spans left.
    Deadline {
        /// The flush's time budget.
        budget: Duration,
    },
    /// A shutdown ended with spans not yet durable: its budget ran out, or
    /// the spool failed (then another cause says why).
    ShutdownUnfinished {
        /// The shutdown's time budget.
        budget: Duration,
        /// Spans still being written or held in memory.
        not_durable: u64,
    },
    /// The spool failed (disk full, I/O error, cannot be opened).
    Spool(SpoolFailure),
    /// The disk thread is not keeping up: its queue is full, so spans wait
    /// in memory.
    DiskBehind {
        /// Spans waiting to be written.
        waiting: u64,
    },
    /// The spool's files were found damaged; what that cost.
    Damage(Box<Damage>),
    /// Spans the spool should have held were missing when it was reopened.
    LostOnReopen(u64),
    /// A spool record failed its checks and was quarantined.
    Quarantined {
        /// Its key in the queue.
        key: u64,
        /// What was wrong with it.
        why: RecordError,
    },
    /// A damaged spool directory was set aside (its bytes kept there).
    SetAside(PathBuf),
}

/// What a flush did when it did not deliver everything: the error
/// [`SpillwayTracer::try_flush`](crate::SpillwayTracer::try_flush) returns
/// (`flush` renders it with `Display`).
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
#[non_exhaustive]
pub struct FlushError {
    /// The collector URL.
    pub endpoint: String,
    /// Why, in the order it happened.
    pub causes: Vec<Cause>,
    /// Spans delivered by this flush.
    pub delivered: usize,
    /// Spans the collector refused for good in this flush (kept as dead
    /// letters or dropped: see `dead_lettered`).
    pub refused: usize,
    /// Whether refused spans were kept as dead letters (else dropped).
    pub dead_lettered: bool,
    /// Spans dropped because each alone was larger than a request may be.
    pub oversize: usize,
    /// Spans written to the spool durably by this flush.
    pub spilled: usize,
    /// Spans handed to the spool that were not yet durable when the flush
    /// returned (its deadline came first); still counted as in memory.
    pub spilling: usize,
    /// Spans kept in memory for the next flush.
    pub kept_in_memory: usize,
    /// Spans dropped because the spool or the memory buffer was full.
    pub dropped_full: u64,
    /// Spooled spans dropped as older than `max_spool_age_ms`.
    pub expired: u64,
    /// The spool after this flush: spans, bytes, cap.
    pub spool: Option<(u64, u64, u64)>,
    /// When the exporter will try the collector again, if it is backing off.
    pub next_attempt_in: Option<Duration>,
}

impl FlushError {
    /// The last failure the collector reported in this flush, if any.
    pub fn cause(&self) -> Option<&SendError> {
        self.causes.iter().rev().find_map(|c| match c {
            Cause::Collector(e) => Some(e),
            _ => None,
        })
    }

    /// The spool records quarantined by this flush: key and reason.
    pub fn quarantined(&self) -> impl Iterator<Item = (u64, &RecordError)> {
        self.causes.iter().filter_map(|c| match c {
            Cause::Quarantined { key, why } => Some((*key, why)),
            _ => None,
        })
    }

    /// Whether the spool failed or was found damaged in this flush.
    pub fn spool_failed(&self) -> bool {
        self.causes.iter().any(|c| {
            matches!(
                c,
                Cause::Spool(_) | Cause::DiskBehind { .. } | Cause::Damage(_) | Cause::LostOnReopen(_)
            )
        })
    }

    /// Whether the collector refuses every request whatever it holds (a
    /// wrong endpoint or credentials): the spans wait for the fix.
    pub fn misconfigured(&self) -> bool {
        self.causes.iter().any(|c| match c {
            Cause::Collector(e) | Cause::BackingOff { last: Some(e) } => e.class() == Class::Misconfigured,
            _ => false,
        })
    }

    /// Counts what sending did, with the collector's answers as causes: a
    /// refusal, and a failure that kept spans (retried ones that then went
    /// through cost nothing and are not reported).
    pub(crate) fn note(&mut self, sent: &crate::export::send::Sent) {
        self.delivered += sent.delivered;
        self.oversize += sent.oversize;
        self.refused += sent.refused_spans();
        if sent.refused_spans() > 0
            && let Some(e) = &sent.last_refusal
        {
            self.because(Cause::Collector(e.clone()));
        }
        if sent.kept_spans() > 0
            && let Some(e) = &sent.last_failure
        {
            self.because(Cause::Collector(e.clone()));
        }
    }

    /// Adds a cause, once; a full disk is said once, with its latest figures.
    pub(crate) fn because(&mut self, cause: Cause) {
        let disk_full = |c: &Cause| matches!(c, Cause::Spool(s) if s.is_disk_full());
        if disk_full(&cause) {
            self.causes.retain(|c| !disk_full(c));
        }
        if !self.causes.contains(&cause) {
            self.causes.push(cause);
        }
    }

    /// Whether the flush did everything it should have: nothing failed,
    /// nothing was dropped, nothing waits.
    pub(crate) fn is_clean(&self) -> bool {
        self.causes.is_empty()
            && self.next_attempt_in.is_none()
            && self.oversize == 0
            && self.dropped_full == 0
            && self.expired == 0
            && self.spilled == 0
            && self.spilling == 0
            && self.kept_in_memory == 0
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

impl Cause {
    /// What opening a damaged spool has to report: the damage, when it
    /// cost spans or set files aside, and where the files went.
    pub(crate) fn of_damage(d: &crate::spool::Damage) -> Vec<Cause> {
        let mut causes = Vec::new();
        if d.lost_spans > 0 || d.set_aside.is_some() {
            causes.push(Cause::Damage(Box::new(d.clone())));
        }
        if let Some(aside) = &d.set_aside {
            causes.push(Cause::SetAside(aside.clone()));
        }
        causes
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Collector(e) if e.class() == Class::Misconfigured => {
                write!(f, "collector refuses every request: {e}")?;
                if let Some(hint) = e.hint() {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            Cause::Collector(e) => write!(f, "{e}"),
            Cause::BackingOff { last: Some(e) } => {
                write!(f, "backing off (last attempt: {})", Cause::Collector(e.clone()))
            }
            Cause::BackingOff { last: None } => write!(f, "backing off after failures"),
            Cause::Deadline { budget } => {
                write!(f, "flush ran out of time ({} ms, flush_timeout_ms)", budget.as_millis())
            }
            Cause::ShutdownUnfinished { budget, not_durable } => write!(
                f,
                "shutdown ended with {not_durable} spans not yet durable (budget {} ms)",
                budget.as_millis()
            ),
            Cause::Spool(e) => write!(f, "spool failed: {e}"),
            Cause::DiskBehind { waiting } => write!(
                f,
                "spool failed: the disk is not keeping up ({waiting} spans waiting to be written)"
            ),
            Cause::Damage(d) => write!(f, "{d}"),
            Cause::LostOnReopen(n) => write!(
                f,
                "reopened the spool; {n} spooled spans were lost with the failed writes (counted as corrupt)"
            ),
            Cause::Quarantined { key, why } => write!(f, "spool record {key} quarantined ({why})"),
            Cause::SetAside(dir) => write!(
                f,
                "the damaged files were set aside in {} (kept for inspection; `spillway purge --set-aside` removes them)",
                dir.display()
            ),
        }
    }
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zipkin {}", self.endpoint)?;
        // The collector's answer first, as operators look for it there.
        let mut causes: Vec<&Cause> = self.causes.iter().collect();
        causes.sort_by_key(|c| !matches!(c, Cause::Collector(_) | Cause::BackingOff { .. }));
        let mut first = true;
        for cause in causes
            .iter()
            .filter(|c| matches!(c, Cause::Collector(_) | Cause::BackingOff { .. }))
        {
            write!(f, "{}{cause}", if first { " " } else { "; " })?;
            first = false;
        }
        write!(f, "; {} spans delivered", self.delivered)?;
        if self.spilled > 0 {
            write!(f, ", {} spilled", self.spilled)?;
        }
        if self.spilling > 0 {
            write!(f, ", {} being written to the spool", self.spilling)?;
        }
        if self.kept_in_memory > 0 {
            write!(f, ", {} kept in memory for retry", self.kept_in_memory)?;
        }
        if self.refused > 0 {
            let fate = if self.dead_lettered {
                "kept as dead letters"
            } else {
                "dropped"
            };
            write!(f, ", {} refused by the collector and {fate}", self.refused)?;
        }
        if self.oversize > 0 {
            write!(f, ", {} dropped as larger than max_request_bytes", self.oversize)?;
        }
        if self.expired > 0 {
            write!(f, ", {} dropped as older than max_spool_age_ms", self.expired)?;
        }
        if self.dropped_full > 0 {
            write!(
                f,
                ", {} dropped because the buffer was full (oldest first)",
                self.dropped_full
            )?;
        }
        for cause in causes
            .iter()
            .filter(|c| !matches!(c, Cause::Collector(_) | Cause::BackingOff { .. }))
        {
            write!(f, "; {cause}")?;
        }
        if let Some((spans, bytes, cap)) = self.spool {
            write!(f, "; spool holds {spans} spans, {} of {}", mib(bytes), mib(cap))?;
        }
        if let Some(d) = self.next_attempt_in {
            write!(f, "; next attempt in {:.1}s", d.as_secs_f64())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_reaches_the_message_in_order_and_the_collector_leads() {
        let mut e = FlushError {
            endpoint: "http://z:9411/api/v2/spans".into(),
            spilled: 3,
            ..FlushError::default()
        };
        e.because(Cause::Damage(Box::default()));
        let full = |free| {
            Cause::Spool(SpoolFailure::from(SpoolError::DiskFull {
                dir: "/spool".into(),
                free,
                needed: 4 << 20,
            }))
        };
        e.because(full(1 << 20));
        // A full disk is said once, with its latest figures.
        e.because(full(2 << 20));
        assert_eq!(e.causes.iter().filter(|c| matches!(c, Cause::Spool(_))).count(), 1);
        e.because(Cause::Collector(SendError::Unreachable("connection refused".into())));
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "zipkin http://z:9411/api/v2/spans unreachable (connection refused); 0 spans delivered, 3 spilled"
            ),
            "{msg}"
        );
        let damage = msg.find("damaged").unwrap();
        let spool = msg.find("spool failed: spool /spool: disk full").unwrap();
        assert!(msg.contains("2.0 MiB free"), "the latest figures: {msg}");
        assert!(damage < spool, "{msg}");
        assert!(!e.is_clean());
    }

    #[test]
    fn a_refusal_of_everything_says_what_to_check() {
        let mut e = FlushError::default();
        e.because(Cause::Collector(SendError::Status {
            status: 404,
            retry_after: None,
            body: String::new(),
        }));
        assert!(e.misconfigured());
        let msg = e.to_string();
        assert!(
            msg.contains("collector refuses every request: answered HTTP 404 Not Found; check the endpoint"),
            "{msg}"
        );
    }
}
