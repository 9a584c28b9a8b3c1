//! The durable queue: batches the collector could not take, on disk, in
//! order, until it can. The spool knows nothing of HTTP or Zipkin: spans
//! in, spans out. This page is its design; each file below owns one role.
//!
//! ## Constraints
//! - **Durable means on stable storage.** A spill the caller reports is
//!   kept through a power cut, not only a `kill -9` (a killed process leaves
//!   the page cache behind; a power cut does not). sled 0.34.7's `flush`
//!   stops at `sync_file_range`, so the spool completes every durability
//!   point itself (`durable`).
//! - **Damage costs only the records it hits, whoever opens first.** sled's
//!   recovery treats a damaged log entry as the end of its log and zeroes
//!   what follows *while it opens*, so the files are checked read-only
//!   before sled sees them (`check`, `sled_log`) and set aside, bytes
//!   kept, when opening would lose anything.
//! - **Bounded.** The size on disk is capped, the filesystem is never
//!   filled by a spill, and every read allocates within a limit.
//! - **One owner.** One process writes a spool; readers (the read-only
//!   tools) never write a byte and never go through sled.
//!
//! ## On disk
//!
//! | file | what | written by |
//! |---|---|---|
//! | `db`, `conf`, `blobs/`, `snap.*` | sled's log, config, large values and snapshots | sled, synced by `durable` |
//! | `spillway.ledger` | what sled must hold at least (`ledger`) | [`Spool::commit`] and removals |
//! | `spillway.lock` | the writer's lock, naming its pid (`dir`) | the opener |
//! | `set-aside/<ms>-<pid>-<n>/` | damaged files, as they were | `dir::set_aside` |
//!
//! sled holds four trees: `queue` and `dead` (the dead letters) map a
//! big-endian u64 sequence to a `record`; `quarantine` maps a fresh
//! sequence to a `state` quarantine frame holding a record that failed
//! its checks, byte for byte; `meta` holds `next_seq`, the state frame of
//! the last commit, and salvage's resume markers. Every record carries its
//! own sequence, tree and service, and every frame a CRC, so `scan` and
//! `view` can read the raw files without sled. Format versions: records
//! v2 (v1 read), state frames v2 (v1 read), ledger format 2 (1 read); a
//! version is only ever added, and every older one stays readable (golden
//! records under `tests/golden/`).
//!
//! ## Invariants
//! - **Order.** Sequences only grow (`next_seq` is persisted with every
//!   write) and every tree leaves oldest first, so each tree holds exactly
//!   its records at or above its watermark (the lowest key it still holds,
//!   recorded in every state frame): a raw reader tells held records from
//!   sled's stale copies by the newest frame alone.
//! - **Ledger.** `spans_at_least` is raised only after a sync made what it
//!   counts durable, and lowered durably before a removal (`commit`, the
//!   one place both happen), so under any crash order sled holds at least
//!   that many spans, unless sled lost them: then the shortfall is counted,
//!   once, by whoever opens the spool first.
//! - **At-least-once.** A record leaves the queue only by
//!   [`Spool::dead_letter`] (after a 2xx, keeping the spans refused, if
//!   any), [`Spool::quarantine`], the cap
//!   or the age cap; the caller keeps at most a few records sent whose
//!   removal is not yet committed (the exporter's `UNSETTLED`), so a crash
//!   repeats at most those.
//! - **Bounds.** A record holds at most [`RECORD_TARGET`] bytes of payload
//!   where the spans allow and [`RECORD_MAX_SPANS`] spans; records are held
//!   to `max_bytes` divided by sled's amplification as measured on this
//!   spool; a spill needing more than the filesystem has (with
//!   [`DISK_RESERVE`] to spare) is refused before sled sees it.
//!
//! ## A walk through
//! **Spill** (`write`, then `commit`): `prepare` encodes a batch into
//! records on the caller's thread; `Spool::append_prepared` numbers them,
//! makes room under the cap (`cap`: the oldest go, the ledger lowered
//! first) and inserts them, unsynced. [`Spool::commit`] then writes a state
//! frame, syncs (`durable`: sled's flush, `fdatasync` of its files, the
//! directory when entries changed) and raises the ledger to what is now
//! durable. One commit covers every write before it began, so concurrent
//! spills share one round (group commit).
//!
//! **Replay** (`read`, `settle`): the exporter reads the oldest records
//! ([`Spool::oldest`]), sends them, and settles each
//! ([`Spool::dead_letter`]): it leaves, its refused spans become a dead
//! letter and an unsent rest is queued again with the record's age. Each
//! removal lowers the ledger before it and is durable at the next commit;
//! the exporter sends at most a few records whose removal is not yet
//! durable.
//!
//! **Open** (`open`): the path is checked (a directory of its own, owned
//! by this user, not writable by others, no links where files belong), the
//! lock taken, and `check` decides, reading only, whether sled would lose
//! anything written before the last durable commit. If so, the files are
//! set aside and [`salvage`] brings every sound record back with its key;
//! what is gone is counted once ([`Damage`]). Then sled opens, the trees are
//! counted and compared with the ledger, and a salvage cut short resumes.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | this page; the [`Spool`] and what it reports |
//! | `open.rs` | opening: checks, set-aside, sled, counts, resume |
//! | `write.rs` | records in: prepare, append, restore |
//! | `cap.rs` | the size cap, the room on the filesystem, the age cap |
//! | `commit.rs` | the durability point and the ledger's rules |
//! | `settle.rs` | records out: ack, dead letters, quarantine, purge |
//! | `read.rs` | records back through sled, oldest first |
//! | `error.rs` | [`SpoolError`], said for people |
//! | `record.rs`, `state.rs`, `ledger.rs` | the formats |
//! | `durable.rs` | what a sync round does |
//! | `dir.rs` | the directory: trust, locks, set-aside |
//! | `sled_log.rs`, `scan.rs`, `view.rs`, `check.rs` | reading the raw files, and the verdict |
//! | `salvage.rs` | sound records from damaged files into a spool |
//! | `ages.rs` | when each queued record was spilled |

mod ages;
mod cap;
pub(crate) mod check;
mod commit;
pub(crate) mod dir;
pub(crate) mod durable;
mod error;
pub(crate) mod ledger;
mod open;
mod read;
pub(crate) mod record;
pub mod salvage;
pub(crate) mod scan;
mod settle;
pub(crate) mod sled_log;
pub(crate) mod state;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod view;
mod write;

use crate::span::Span;
use ledger::Ledger;
use record::{Meta, RecordError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::SpoolError;
pub use record::Tree;
pub(crate) use write::{Prepared, prepare, prepare_run};

/// The lock file spillway holds while it owns the spool (sled takes its
/// own lock on `db` once it opens; this one covers the checks before).
pub const LOCK_FILE: &str = "spillway.lock";

/// How long opening a spool, to write or to read, waits for a lock another
/// owner is releasing.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Target payload size of one record.
pub const RECORD_TARGET: usize = 64 << 10;
/// Most spans in one record, so replay (budgeted in spans, a record at a
/// time) and its requests stay fine-grained however well records compress.
pub const RECORD_MAX_SPANS: usize = 1024;

/// Free space a spill leaves on the spool's filesystem at least: room for
/// sled to write a new log segment and rewrite a full leaf as a blob file
/// (16 records of 64 KiB) while it removes records, and for its snapshot.
pub const DISK_RESERVE: u64 = 3 << 20;

/// sled's amplification assumed until it is measured (1.36 to 1.7 was
/// measured with 64 KiB records).
const AMPLIFICATION_GUESS: f64 = 1.7;
/// Record bytes below which the amplification is not measured (with
/// [`AMPLIFICATION_MIN_CAP_FRACTION`]): sled's fixed overhead would make it
/// meaningless. The bar is low next to what the cap lets records hold, so
/// the cap itself never pushes the records under it and leaves a stale
/// measurement in force.
const AMPLIFICATION_MIN_BYTES: u64 = 8 << 20;
/// The bar is at most this fraction of the cap.
const AMPLIFICATION_MIN_CAP_FRACTION: u64 = 16;
/// The highest amplification taken as measured. With the records at 1/16
/// of the cap at least, a higher one would say sled holds more than the
/// cap already; the cap then keeps the records at 1/16 of it.
const AMPLIFICATION_MAX: f64 = 16.0;
/// The share of the cap records aim for: sled reclaims the space of removed
/// records lazily, so its size on disk trails the records by a few segments.
/// How far it trails moves with the records' sizes (at 0.9 the 32 MiB case
/// of `disk_cap` peaked between 98.8 % and 102.0 % of the cap as the record
/// format changed); 0.85 keeps it under 95 %.
const CAP_HEADROOM: f64 = 0.85;
/// The size on disk is re-measured each time this fraction of the cap has
/// been written since the last measurement (and at least every second).
const MEASURE_EVERY_CAP_FRACTION: u64 = 32;
/// The longest the amplification goes without being re-measured.
const AMPLIFICATION_EVERY: Duration = Duration::from_secs(1);

/// A record of the queue or the dead letters, as [`Spool::records`] reads it.
#[derive(Debug)]
pub struct StoredRecord {
    /// Its sequence number.
    pub key: u64,
    /// The tree it is in.
    pub tree: Tree,
    /// Its size in bytes.
    pub bytes: usize,
    /// The service that recorded it (empty when it cannot be read).
    pub service: String,
    /// Its spans, or why it cannot be read.
    pub spans: Result<Vec<Span>, RecordError>,
    /// The span count its header declares (0 when the header is unreadable).
    pub declared_spans: u64,
    /// When it was first written, unix milliseconds (0 when unreadable).
    pub created_unix_ms: u64,
    raw: sled::IVec,
}

impl StoredRecord {
    pub(super) fn read(tree: Tree, key: &[u8], raw: sled::IVec) -> StoredRecord {
        let header = record::header(&raw).ok();
        let (service, spans) = match record::decode(&raw) {
            Ok(r) => (r.service, Ok(r.spans)),
            Err(e) => (String::new(), Err(e)),
        };
        StoredRecord {
            key: be(key),
            tree,
            bytes: raw.len(),
            service,
            spans,
            declared_spans: header.map_or(0, |h| u64::from(h.spans)),
            created_unix_ms: header.map_or(0, |h| h.meta.created_unix_ms),
            raw,
        }
    }

    /// The record's bytes as stored.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Counts kept for stats, as of now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolStats {
    /// Records in the queue.
    pub records: u64,
    /// Spans in the queue (as their headers declare).
    pub spans: u64,
    /// Bytes of records in the queue.
    pub bytes: u64,
    /// Records in the dead-letter tree.
    pub dead_letter_records: u64,
    /// Spans in the dead-letter tree.
    pub dead_letter_spans: u64,
    /// Records in quarantine.
    pub quarantined_records: u64,
    /// When the oldest record in the queue was spilled (Unix ms, by this
    /// machine's clock; records spilled again keep their first time).
    pub oldest_spilled_unix_ms: Option<u64>,
    /// The last replay rate measured on this spool, if any.
    pub replay: Option<state::ReplayRate>,
}

/// What [`Spool::open`] found when sled held less than the ledger says it
/// must (see `ledger`): spans sled lost without an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// Spans the ledger says the queue held at least.
    pub expected_spans: u64,
    /// Spans the queue holds now.
    pub found_spans: u64,
    /// Spans owed that could not be recovered.
    pub lost_spans: u64,
    /// What the check before sled opened the files found wrong.
    pub findings: Vec<check::Finding>,
    /// Where the damaged files were set aside, bytes kept, if they were
    /// (their sound records were salvaged back into the queue).
    pub set_aside: Option<PathBuf>,
    /// What salvaging them did.
    pub salvage: Option<Box<salvage::Report>>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the spool's files were damaged")?;
        if let Some(first) = self.findings.first() {
            write!(f, " ({first}")?;
            if self.findings.len() > 1 {
                write!(f, "; {} more", self.findings.len() - 1)?;
            }
            write!(f, ")")?;
        }
        match &self.set_aside {
            Some(aside) => write!(
                f,
                ": set aside in {}, {} spans salvaged back into the queue, {} lost (counted as corrupt)",
                aside.display(),
                self.found_spans,
                self.lost_spans
            ),
            None => write!(
                f,
                ": sled held {} of at least {} spooled spans; {} lost (counted as corrupt)",
                self.found_spans, self.expected_spans, self.lost_spans
            ),
        }
    }
}

/// What [`Spool::clear`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleared {
    /// Records removed.
    pub records: u64,
    /// Spans their headers declared.
    pub spans: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The durable queue. See the module docs for its guarantees.
pub struct Spool {
    dir: PathBuf,
    db: sled::Db,
    queue: sled::Tree,
    dead: sled::Tree,
    quarantine: sled::Tree,
    meta: sled::Tree,
    next_seq: u64,
    max_bytes: u64,
    amplification: f64,
    measured_at: Option<Instant>,
    written_since_measure: u64,
    stats: SpoolStats,
    /// When each queue record was spilled.
    ages: ages::Ages,
    /// The last replay rate measured, kept in every state frame.
    replay: Option<state::ReplayRate>,
    /// Spans dropped to make room that no caller has been told of yet.
    dropped_unreported: u64,
    buf: Vec<u8>,
    /// What sled must hold; `None` if the file cannot be opened (then
    /// silent loss by sled goes unnoticed, as without a ledger).
    ledger: Option<Ledger>,
    /// `spans_at_least` as last written to the ledger.
    ledger_spans: u64,
    damage: Option<Damage>,
    syncer: durable::Syncer,
    /// `next_seq` at the last [`Spool::commit`]: queue records below it
    /// were synced.
    synced_below: u64,
    /// The number of the last commit begun.
    round: u64,
    /// The number of the last commit made durable.
    synced_round: u64,
    /// Spans of the synced queue records still queued: what the ledger may
    /// claim at most.
    durable_spans: u64,
    /// Queue records the ledger was lowered for ([`Spool::lower_ledger_for`])
    /// that have not left yet; forgotten at the next commit.
    lowered_for: Vec<u64>,
    /// The writer's lock on the directory, held while the spool is open.
    _lock: dir::Lock,
}

const NEXT_SEQ: &[u8] = b"next_seq";
const STATE: &[u8] = b"state";

fn be(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = key.len().min(8);
    a[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(a)
}

impl Spool {
    /// The next sequence number the spool will give.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// What [`Spool::open`] found damaged, without taking it.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// What [`Spool::open`] found missing from sled, once.
    pub fn take_damage(&mut self) -> Option<Damage> {
        self.damage.take()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn storage(&self, source: sled::Error) -> SpoolError {
        SpoolError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    pub(super) fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Queue => &self.queue,
            Tree::Dead => &self.dead,
        }
    }

    /// Current counts, kept in memory: free to call on every flush.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            oldest_spilled_unix_ms: self.ages.oldest(),
            replay: self.replay,
            ..self.stats
        }
    }

    /// Keeps `rate` as the last replay rate measured; durable with the
    /// next commit's state frame.
    pub fn note_replay_rate(&mut self, rate: state::ReplayRate) {
        self.replay = Some(rate);
    }
}

/// The span count a record's header declares; 0 when it is unreadable.
pub(super) fn declared_spans(record: &[u8]) -> u64 {
    record::header(record).map_or(0, |h| u64::from(h.spans))
}
