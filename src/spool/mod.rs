//! The durable queue: batches the collector could not take, on disk, in
//! order, until it can.
//!
//! A spool is a sled database in one directory with four trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `queue` | big-endian u64 sequence | a [`record`] (one batch) |
//! | `dead` | its own sequence | a record of spans the collector refused for good |
//! | `quarantine` | the sequence it had in its tree | the raw bytes of a record that failed its checks |
//! | `meta` | `next_seq`, `acked_below` | the next sequence; the watermark below which every queue record is gone |
//!
//! ## Guarantees
//! - **Order**: keys are big-endian sequence numbers, so sled's order is
//!   FIFO; the next sequence is persisted with every push and survives
//!   restarts. Each record also carries its sequence and service name
//!   (see [`record`]), so [`salvage`] can rebuild the queue, in order,
//!   from raw files.
//! - **Durability point**: [`Spool::commit`] returns only after every
//!   change made before it began (appends, removals, dead letters,
//!   quarantines, cap evictions, the watermark) is on stable storage:
//!   sled's log, blob files, `conf` and snapshots fsynced and their
//!   directories too (see [`durable`]; sled's own `flush` does not do
//!   that), tested by cutting power under it. [`Spool::push`] is an append
//!   and a commit. A power cut after a commit costs nothing it covered; one
//!   before it costs only what the caller has not yet reported as spilled.
//!   One commit covers every writer before it, so concurrent spills share
//!   one round (group commit).
//! - **At-least-once**: a record leaves `queue` only through [`Spool::ack`]
//!   (after a 2xx), [`Spool::dead_letter`], [`Spool::quarantine`] or a cap.
//!   Each of these is committed before the next record is sent, so a crash
//!   can repeat at most the one record
//!   that was in flight: delivered, but not yet acknowledged on disk. If
//!   the removal itself fails, the counts still include the record and the
//!   caller learns whether it left only by reopening the spool.
//! - **Watermark**: records leave the queue oldest first, and every removal
//!   persists `acked_below`, the lowest key still queued. [`salvage`] uses
//!   it to tell records still owed from stale copies sled left in its log.
//! - **Damage**: a record that fails its CRC or does not decode is moved,
//!   byte for byte, to `quarantine` and reported by key; the queue goes on.
//! - **Ownership**: one process at a time. A second opener gets
//!   [`SpoolError::InUse`] naming the directory, after waiting up to the
//!   given lock wait for an owner that is shutting down.
//! - **Bounds**: each record holds at most [`RECORD_TARGET`] bytes of
//!   payload where the spans allow (sled keeps larger values as separate
//!   files it reclaims poorly) and at most [`RECORD_MAX_SPANS`] spans. The
//!   cap bounds the size on disk: sled stores each byte of record more than
//!   once (log-structured pages, old versions until they are cleaned), so
//!   records are held to `max_bytes` divided by sled's amplification as
//!   measured on this spool (see [`Spool::amplification`]). Past the cap the
//!   oldest records are dropped and their spans reported for counting.
//!
//! The spool knows nothing of HTTP or Zipkin: spans in, spans out.

mod ages;
pub mod check;
pub mod dir;
pub mod durable;
pub mod ledger;
pub mod record;
pub mod salvage;
pub mod scan;
pub mod sled_log;
pub mod state;
pub mod view;

use crate::span::Span;
use ledger::Ledger;
pub use record::Part;

use record::{Meta, RecordError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file spillway holds while it owns the spool (sled takes its
/// own lock on `db` once it opens; this one covers the checks before).
pub const LOCK_FILE: &str = "spillway.lock";

/// How long [`Spool::open`] waits for a lock another owner is releasing.
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
/// Record bytes below which sled's fixed overhead makes a measured
/// amplification meaningless.
const AMPLIFICATION_MIN_BYTES: u64 = 8 << 20;
/// The share of the cap records aim for: sled reclaims the space of removed
/// records lazily, so its size on disk trails the records by a few segments.
const CAP_HEADROOM: f64 = 0.9;
/// The size on disk is re-measured each time this fraction of the cap has
/// been written since the last measurement (and at least every second).
const MEASURE_EVERY_CAP_FRACTION: u64 = 32;
/// The longest the amplification goes without being re-measured.
const AMPLIFICATION_EVERY: Duration = Duration::from_secs(1);

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the directory.
    #[error("spool {} is in use by another process{}", dir.display(), dir::holder_note(dir))]
    InUse {
        /// The spool directory.
        dir: PathBuf,
    },
    /// There is no spool in the directory.
    #[error("no spool at {}", dir.display())]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// sled or the file system failed.
    #[error("spool {}: {}", dir.display(), describe(source))]
    Storage {
        /// The spool directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The spool's filesystem has too little room for a spill: refused
    /// before sled saw it, so the spool stays as it was.
    #[error(
        "spool {}: disk full: {} free on its filesystem, a spill needs {} (with room to spare for removals)",
        dir.display(),
        human(*free),
        human(*needed)
    )]
    DiskFull {
        /// The spool directory.
        dir: PathBuf,
        /// Bytes free.
        free: u64,
        /// Bytes the spill needs.
        needed: u64,
    },
    /// sled's files could not be synced to stable storage.
    #[error("spool {}: syncing to disk failed: {source}", dir.display())]
    Sync {
        /// The spool directory.
        dir: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Salvaging damaged files failed.
    #[error("spool {}: {why}", dir.display())]
    Failed {
        /// The spool directory.
        dir: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The spool could have been planted or tampered with (another user's
    /// directory, one others can write to, a symbolic link where a file
    /// belongs): refused before anything is opened.
    #[error("refusing the spool at {}: {why}", path.display())]
    Insecure {
        /// The directory or entry.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The path cannot hold a spool: nothing there is touched.
    #[error("{} is not a spool directory: {why}; give spillway a directory of its own", dir.display())]
    NotASpool {
        /// The path.
        dir: PathBuf,
        /// What is there instead.
        why: String,
    },
    /// The file system refused an operation on the spool directory.
    #[error("{what} spool {}: {source}", dir.display())]
    Io {
        /// The spool directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The ledger beside sled could not be written.
    #[error("spool {}: ledger: {source}", dir.display())]
    Ledger {
        /// The spool directory.
        dir: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A batch could not be framed.
    #[error("spool {}: {source}", dir.display())]
    Record {
        /// The spool directory.
        dir: PathBuf,
        /// What was wrong.
        source: RecordError,
    },
}

impl SpoolError {
    /// Whether sled found the files damaged (as opposed to the disk or the
    /// OS failing, or another owner): only then is a spool set aside.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            SpoolError::Storage {
                source: sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) | sled::Error::Unsupported(_),
                ..
            }
        )
    }
}

/// What a sled error means, for people (sled's own text for some is a
/// debug dump: "Read corrupted data at file offset None backtrace ()").
fn describe(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => format!("the file system failed: {io}{}", io_hint(io)),
        sled::Error::Corruption { at, .. } => format!(
            "sled found its files damaged{}; `spillway verify` says where, and opening the spool again sets the files aside and salvages every sound record",
            at.map_or_else(String::new, |at| format!(" ({at})"))
        ),
        sled::Error::ReportableBug(why) => {
            format!("sled failed inside ({why}); its files are left as they are: run `spillway verify`")
        }
        sled::Error::Unsupported(why) => format!("sled refused the operation ({why})"),
        sled::Error::CollectionNotFound(_) => "a tree of the spool is missing from sled".to_owned(),
    }
}

/// What to do about an I/O error, where that is clear.
fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        PermissionDenied => " (check the owner and mode of the spool directory and its files)",
        StorageFull => " (free space on the spool's filesystem)",
        ReadOnlyFilesystem => " (the spool's filesystem is mounted read-only)",
        _ => "",
    }
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// A record of the queue or the dead letters, as [`Spool::entries`] reads it.
#[derive(Debug)]
pub struct Entry {
    /// Its sequence number.
    pub key: u64,
    /// The tree it is in.
    pub part: Part,
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

impl Entry {
    fn read(part: Part, key: &[u8], raw: sled::IVec) -> Entry {
        let header = record::header(&raw).ok();
        let (service, spans) = match record::decode(&raw) {
            Ok(r) => (r.service, Ok(r.spans)),
            Err(e) => (String::new(), Err(e)),
        };
        Entry {
            key: be(key),
            part,
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
/// must (see [`ledger`]): spans sled lost without an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// A tree of the spool, for [`Spool::clear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// The queue.
    Queue,
    /// The dead letters.
    Dead,
    /// The quarantine.
    Quarantine,
}

/// What [`Spool::clear`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Records removed.
    pub records: u64,
    /// Spans their headers declared.
    pub spans: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A batch encoded as queue records, not yet numbered: what [`prepare`]
/// makes and [`Spool::append_prepared`] takes.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Each record's bytes and span count.
    records: Vec<(Vec<u8>, u32)>,
    /// When they were spilled (Unix ms).
    created_unix_ms: u64,
}

impl Prepared {
    /// The spans its records hold.
    pub fn spans(&self) -> u64 {
        self.records.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// The bytes of its records.
    pub fn bytes(&self) -> u64 {
        self.records.iter().map(|(r, _)| r.len() as u64).sum()
    }
}

/// Encodes `service`'s `spans` as queue records of at most
/// [`RECORD_TARGET`] payload bytes (where the spans allow) and
/// [`RECORD_MAX_SPANS`] spans, first spilled at `created_unix_ms`; the
/// spool numbers them when they are appended.
pub fn prepare(service: &str, spans: &[Span], created_unix_ms: u64) -> Result<Prepared, RecordError> {
    let mut records = Vec::new();
    let mut rest = spans;
    let mut per_record = spans.len().min(RECORD_MAX_SPANS);
    let mut buf = Vec::new();
    while !rest.is_empty() {
        let n = per_record.min(rest.len());
        buf.clear();
        let meta = Meta {
            seq: 0,
            part: Part::Queue,
            created_unix_ms,
        };
        record::encode(service, &rest[..n], meta, &mut buf)?;
        let payload = buf.len() - record::HEADER_LEN;
        if payload > RECORD_TARGET && n > 1 {
            // Aim for the target from the size seen, with some margin.
            per_record = (n * RECORD_TARGET / payload * 9 / 10).clamp(1, n - 1);
            continue;
        }
        records.push((buf.clone(), n as u32));
        rest = &rest[n..];
    }
    Ok(Prepared {
        records,
        created_unix_ms,
    })
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
    /// Entries found readable by others at open, and made private.
    tightened: Vec<PathBuf>,
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
    /// Opens (or creates) the spool in `dir`, capped at `max_bytes` on
    /// disk, waiting up to [`LOCK_WAIT`] for a previous owner to let go.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, max_bytes, LOCK_WAIT)
    }

    /// Opens an existing spool without waiting for its lock, for tools:
    /// [`SpoolError::Missing`] if `dir` holds no spool, [`SpoolError::InUse`]
    /// at once if another process holds it.
    pub fn open_existing(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        if !Spool::exists(dir) {
            return Err(SpoolError::Missing { dir: dir.to_path_buf() });
        }
        Spool::open_with(dir, max_bytes, Duration::ZERO)
    }

    /// Whether `dir` holds a spool's files.
    pub fn exists(dir: &Path) -> bool {
        dir::holds_spool(dir)
    }

    /// [`Spool::open`] with a chosen lock wait.
    ///
    /// Before sled sees the files, the spool is checked ([`check`]): a
    /// damaged one is set aside (its bytes kept, see [`dir`]) and its sound
    /// records salvaged back into a fresh spool in its place, so opening
    /// never destroys what can be saved; [`Spool::take_damage`] says what
    /// was found and what it cost. A salvage that was interrupted is
    /// resumed. A path that is not a spool directory is refused.
    pub fn open_with(dir: &Path, max_bytes: u64, lock_wait: Duration) -> Result<Spool, SpoolError> {
        let existed = dir::check_path(dir)?;
        if !existed {
            dir::create(dir)?;
        }
        dir::check_trust(dir, true)?;
        let lock = dir::Lock::exclusive(dir, lock_wait)?;
        let io = |what: &'static str| {
            let dir = dir.to_path_buf();
            move |source| SpoolError::Io { dir, what, source }
        };
        let mut damaged = None;
        if existed && dir::holds_spool(dir) {
            let check = check::Check::run(dir).map_err(io("cannot read"))?;
            if check.damaged() {
                damaged = Some(check);
            }
        }
        if damaged.is_some() {
            let aside = dir::set_aside(dir).map_err(io("cannot set aside the damaged files of"))?;
            let check = damaged.take().map(|c| (c, aside));
            return Spool::open_salvaging(dir, max_bytes, lock, check);
        }
        match open_sled(dir, lock_wait) {
            Ok(db) => {
                let mut spool = Spool::assemble(dir, db, max_bytes, lock)?;
                spool.resume_salvages()?;
                Ok(spool)
            }
            // sled found damage the check did not (or panicked over it):
            // set aside all the same, before anything else opens it.
            Err(e) if e.is_damage() => {
                let found = check::Finding {
                    file: dir.to_path_buf(),
                    offset: 0,
                    what: format!("sled could not open the files: {e}"),
                };
                let aside = dir::set_aside(dir).map_err(io("cannot set aside the damaged files of"))?;
                let view = view::View::read(&aside).map_err(io("cannot read"))?;
                let check = check::Check {
                    plan: sled_log::Recovery::default(),
                    view,
                    synced_end: None,
                    findings: vec![found],
                };
                Spool::open_salvaging(dir, max_bytes, lock, Some((check, aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a fresh spool in `dir` (its damaged files just set aside) and
    /// salvages them into it, keeping their keys.
    fn open_salvaging(
        dir: &Path,
        max_bytes: u64,
        lock: dir::Lock,
        damaged: Option<(check::Check, PathBuf)>,
    ) -> Result<Spool, SpoolError> {
        let db = open_sled(dir, Duration::ZERO)?;
        let mut spool = Spool::assemble(dir, db, max_bytes, lock)?;
        let Some((check, aside)) = damaged else {
            return Ok(spool);
        };
        let report = match salvage::salvage(&aside, &mut spool) {
            Ok(report) => report,
            Err(salvage::SalvageError::Spool(e)) => return Err(e),
            Err(e) => {
                return Err(SpoolError::Failed {
                    dir: dir.to_path_buf(),
                    why: e.to_string(),
                });
            }
        };
        let salvaged = report.spans;
        let expected = check
            .view
            .ledger
            .map_or(0, |l| l.spans_at_least)
            .max(check.view.queue_spans());
        spool.damage = Some(Damage {
            expected_spans: expected,
            found_spans: salvaged,
            lost_spans: expected.saturating_sub(salvaged),
            findings: check.findings,
            set_aside: Some(aside),
            salvage: Some(Box::new(report)),
        });
        Ok(spool)
    }

    /// Continues every salvage into this spool that did not finish (the
    /// process stopped part-way): the keys it used are committed, so the
    /// records land where they did.
    fn resume_salvages(&mut self) -> Result<(), SpoolError> {
        let mut unfinished = Vec::new();
        for item in self.meta.scan_prefix(b"salvage:") {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            if salvage::Marker::decode(&v).is_some_and(|m| !m.done) {
                let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                    &k[b"salvage:".len()..],
                ));
                unfinished.push(path);
            }
        }
        for from in unfinished.into_iter().filter(|p| p.is_dir()) {
            let expected_before = self.stats.spans;
            match salvage::salvage(&from, self) {
                Ok(report) => {
                    if self.damage.is_none() && from.starts_with(self.dir.join(dir::SET_ASIDE)) {
                        let _ = expected_before;
                        self.damage = Some(Damage {
                            expected_spans: report.spans,
                            found_spans: report.spans,
                            lost_spans: 0,
                            findings: Vec::new(),
                            set_aside: Some(from.clone()),
                            salvage: Some(Box::new(report)),
                        });
                    }
                }
                Err(salvage::SalvageError::Spool(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// A spool over the sled database `db` just opened in `dir`.
    fn assemble(dir: &Path, db: sled::Db, max_bytes: u64, lock: dir::Lock) -> Result<Spool, SpoolError> {
        let storage = |source| SpoolError::Storage {
            dir: dir.to_path_buf(),
            source,
        };
        // sled created its files with the umask's modes: private, before
        // any span is written.
        let tightened = dir::tighten(dir).map_err(|source| SpoolError::Io {
            dir: dir.to_path_buf(),
            what: "cannot make private the files of",
            source,
        })?;
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        let (queue, dead, quarantine, meta) = (tree("queue")?, tree("dead")?, tree("quarantine")?, tree("meta")?);
        let mut next_seq = meta.get(NEXT_SEQ).map_err(storage)?.map_or(0, |v| be(&v));
        for t in [&queue, &dead, &quarantine] {
            if let Some((k, _)) = t.last().map_err(storage)? {
                next_seq = next_seq.max(be(&k).saturating_add(1));
            }
        }
        let (stats, ages) = count(&queue, &dead, &quarantine).map_err(storage)?;
        let (ledger, owed) = match Ledger::open(dir) {
            Ok((ledger, state)) => (Some(ledger), state),
            Err(_) => (None, None),
        };
        let framed = meta.get(STATE).map_err(storage)?.and_then(|v| state::State::decode(&v));
        let round = framed.map_or(0, |f| f.round).max(owed.map_or(0, |o| o.round));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            db,
            queue,
            dead,
            quarantine,
            meta,
            next_seq,
            max_bytes,
            amplification: AMPLIFICATION_GUESS,
            measured_at: None,
            written_since_measure: 0,
            stats,
            ages,
            replay: framed.and_then(|f| f.replay),
            dropped_unreported: 0,
            buf: Vec::new(),
            ledger,
            ledger_spans: owed.map_or(0, |o| o.spans_at_least),
            damage: None,
            syncer: durable::Syncer::new(dir),
            synced_below: next_seq,
            round,
            synced_round: round,
            durable_spans: stats.spans,
            tightened,
            _lock: lock,
        };
        if let Some(owed) = owed {
            spool.check(owed)?;
        }
        Ok(spool)
    }

    /// Compares sled's view with what the ledger says it must hold and keeps
    /// any shortfall for [`Spool::take_damage`]. (The bytes cannot be
    /// recovered here: sled zeroes its log past a damaged entry while it
    /// opens, so by now they are gone; `spillway salvage` run on a copy
    /// made before any open is the way to get them back.)
    fn check(&mut self, owed: ledger::State) -> Result<(), SpoolError> {
        self.next_seq = self.next_seq.max(owed.next_seq);
        self.synced_below = self.next_seq;
        let found_spans = self.stats.spans;
        if found_spans >= owed.spans_at_least {
            return Ok(());
        }
        self.damage = Some(Damage {
            expected_spans: owed.spans_at_least,
            found_spans,
            lost_spans: owed.spans_at_least - found_spans,
            ..Damage::default()
        });
        // The loss is reported once; from now on the ledger follows sled.
        self.write_ledger(found_spans, None)
    }

    /// The next sequence number the spool will give.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Never gives a sequence below `seq` (a salvaged spool's own).
    pub(crate) fn reserve_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// A salvage's marker in this spool (see [`salvage`]).
    pub(crate) fn marker(&self, key: &[u8]) -> Result<Option<salvage::Marker>, SpoolError> {
        let v = self.meta.get(key).map_err(|e| self.storage(e))?;
        Ok(v.and_then(|v| salvage::Marker::decode(&v)))
    }

    /// Records a salvage's marker (durable at the next commit).
    pub(crate) fn set_marker(&mut self, key: &[u8], m: salvage::Marker) -> Result<(), SpoolError> {
        self.meta.insert(key, &m.encode()[..]).map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Puts a salvaged record back, bytes as they were, under `key` (its
    /// own sequence, shifted), or under a fresh sequence if it carries none
    /// (format 1). Putting the same record back twice holds it once.
    /// Durable at the next commit.
    pub(crate) fn restore(&mut self, part: Part, key: Option<u64>, mut bytes: Vec<u8>) -> Result<(), SpoolError> {
        let key = match key {
            Some(k) => {
                record::set_seq(&mut bytes, k);
                k
            }
            None => self.next_seq,
        };
        let spans = declared_spans(&bytes);
        let created = record::header(&bytes).ok().map(|h| h.meta.created_unix_ms);
        let len = bytes.len() as u64;
        let previous = self
            .tree(part)
            .insert(key.to_be_bytes(), bytes)
            .map_err(|e| self.storage(e))?;
        self.next_seq = self.next_seq.max(key + 1);
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        if let Some(old) = previous {
            // The same record again (a resumed salvage): counted once.
            let old_spans = declared_spans(&old);
            match part {
                Part::Queue => {
                    self.stats.spans = self.stats.spans.saturating_sub(old_spans);
                    self.stats.bytes = self.stats.bytes.saturating_sub(old.len() as u64);
                    self.stats.records = self.stats.records.saturating_sub(1);
                }
                Part::Dead => {
                    self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(old_spans);
                    self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(1);
                }
            }
        }
        match part {
            Part::Queue => {
                if let Some(t) = created {
                    self.ages.insert(key, t);
                }
                self.stats.records += 1;
                self.stats.bytes += len;
                self.stats.spans += spans;
            }
            Part::Dead => {
                self.stats.dead_letter_records += 1;
                self.stats.dead_letter_spans += spans;
            }
        }
        Ok(())
    }

    /// Puts a salvaged quarantined record back under `key`.
    pub(crate) fn restore_quarantined(&mut self, key: u64, queue_key: u64, raw: &[u8]) -> Result<(), SpoolError> {
        let previous = self
            .quarantine
            .insert(key.to_be_bytes(), state::quarantine_frame(key, queue_key, raw))
            .map_err(|e| self.storage(e))?;
        if previous.is_none() {
            self.stats.quarantined_records += 1;
        }
        self.next_seq = self.next_seq.max(key + 1);
        Ok(())
    }

    /// The entries [`Spool::open`] found readable by others and made
    /// private (0600 files, 0700 directories), once.
    pub fn take_tightened(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.tightened)
    }

    /// What [`Spool::open`] found damaged, without taking it.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// What [`Spool::open`] found missing from sled, once.
    pub fn take_damage(&mut self) -> Option<Damage> {
        self.damage.take()
    }

    /// Lowers the ledger before queue records leave: `spans` of them were
    /// synced, and the oldest go through key `through` (if the oldest go).
    /// Durable before the removal is made, so the ledger stays a lower
    /// bound whenever sled writes the removal out.
    fn lower_ledger(&mut self, spans: u64, through: Option<u64>) -> Result<(), SpoolError> {
        let at_least = self.ledger_spans.min(self.durable_spans.saturating_sub(spans));
        self.write_ledger(at_least, through)
    }

    /// Writes the ledger: the queue holds at least `spans_at_least` spans,
    /// and its lowest key is above `removed_through` (the last key about to
    /// be removed, if any).
    fn write_ledger(&mut self, spans_at_least: u64, removed_through: Option<u64>) -> Result<(), SpoolError> {
        if self.ledger.is_none() {
            return Ok(());
        }
        let from = removed_through.map_or(0, |k| k.saturating_add(1));
        let watermark = match self.queue.range(from.to_be_bytes()..).next() {
            Some(item) => be(&item.map_err(|e| self.storage(e))?.0),
            None => self.next_seq,
        };
        let state = ledger::State {
            spans_at_least,
            watermark,
            next_seq: self.synced_below,
            round: self.synced_round,
        };
        let dir = self.dir.clone();
        if let Some(l) = &mut self.ledger {
            l.write(state).map_err(|source| SpoolError::Ledger { dir, source })?;
        }
        self.ledger_spans = spans_at_least;
        Ok(())
    }

    /// The spans of the queue records `victims` (key, spans) that were synced.
    fn durable_of(&self, victims: impl Iterator<Item = (u64, u64)>) -> u64 {
        victims
            .filter(|&(key, _)| key < self.synced_below)
            .map(|(_, n)| n)
            .sum()
    }

    /// Bookkeeping for a queue record that left: its spans no longer
    /// count as durable once it was synced.
    fn forget_durable(&mut self, key: u64, spans: u64) {
        if key < self.synced_below {
            self.durable_spans = self.durable_spans.saturating_sub(spans);
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn storage(&self, source: sled::Error) -> SpoolError {
        SpoolError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    fn tree(&self, part: Part) -> &sled::Tree {
        match part {
            Part::Queue => &self.queue,
            Part::Dead => &self.dead,
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

    /// sled's own size on disk. It reads file metadata and scans sled's
    /// blob directory, so it is for reports, not for every flush.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Whether the spool's filesystem has room for `incoming` more bytes of
    /// records, as sled will store them (its amplification) and with
    /// [`DISK_RESERVE`] to spare; `Err` says how much is free and needed.
    ///
    /// sled fails for good on a full disk (and can hang while closing after
    /// it), so a spill is refused before sled sees it; removals, which the
    /// reserve leaves room for, still go ahead and make room.
    pub fn room_for(&self, incoming: u64) -> Result<(), SpoolError> {
        let Ok(st) = rustix::fs::statvfs(&self.dir) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let needed = (incoming as f64 * self.amplification) as u64 + DISK_RESERVE;
        if free >= needed {
            return Ok(());
        }
        Err(SpoolError::DiskFull {
            dir: self.dir.clone(),
            free,
            needed,
        })
    }

    /// Bytes on disk per byte of record, as last measured (a conservative
    /// guess until the queue is big enough to measure).
    pub fn amplification(&self) -> f64 {
        self.amplification
    }

    /// Re-measures sled's amplification when the queue is big enough for it
    /// to mean something, after a 1/[`MEASURE_EVERY_CAP_FRACTION`] of the
    /// cap was written or [`AMPLIFICATION_EVERY`] passed.
    fn measure(&mut self, incoming: u64) {
        self.written_since_measure += incoming;
        let due = self.measured_at.is_none_or(|t| t.elapsed() >= AMPLIFICATION_EVERY)
            || self.written_since_measure >= self.max_bytes / MEASURE_EVERY_CAP_FRACTION;
        if !due || self.stats.bytes < AMPLIFICATION_MIN_BYTES.min(self.max_bytes / 4) {
            return;
        }
        self.measured_at = Some(Instant::now());
        self.written_since_measure = 0;
        if let Ok(disk) = self.db.size_on_disk() {
            self.amplification = (disk as f64 / self.stats.bytes as f64).clamp(1.0, 4.0);
        }
    }

    /// Appends `service`'s `spans` as one or more records and syncs them to
    /// disk (the durability point). If the spool would exceed its cap, the
    /// oldest records are dropped first; returns how many spans that
    /// dropped.
    ///
    /// If the sync fails, the records are taken out again (as far as a
    /// failed sled allows), so the spool counts only what it reported as
    /// spilled; spans dropped to make room stay dropped and are reported by
    /// [`Spool::take_dropped`].
    pub fn push(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
        let written = self.append_records(service, spans, created_unix_ms)?;
        if let Err(e) = self.commit() {
            for (key, bytes, n) in written {
                // Best effort: a failed sled refuses further writes. The
                // counts are undone regardless; a record that did reach the
                // disk is found and counted when the spool is reopened.
                let _ = self.queue.remove(key.to_be_bytes());
                self.forget(key, bytes, u64::from(n));
            }
            return Err(e);
        }
        Ok(self.take_dropped())
    }

    /// The durability point for everything done since the last one: syncs
    /// sled's files (see [`durable`]), then raises the ledger to what is
    /// now on stable storage. Appends, removals, dead letters and
    /// quarantines are durable once this returns `Ok`; one call covers
    /// every change made before it began (group commit).
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        self.round += 1;
        let frame = self.state()?.encode();
        self.meta.insert(STATE, &frame[..]).map_err(|e| self.storage(e))?;
        self.sync()?;
        self.synced_below = self.next_seq;
        self.synced_round = self.round;
        self.durable_spans = self.stats.spans;
        self.write_ledger(self.stats.spans, None)
    }

    /// What the spool holds now, as its state frame records it.
    fn state(&self) -> Result<state::State, SpoolError> {
        let first = |t: &sled::Tree| -> Result<u64, SpoolError> {
            Ok(t.first()
                .map_err(|e| self.storage(e))?
                .map_or(self.next_seq, |(k, _)| be(&k)))
        };
        Ok(state::State {
            round: self.round,
            next_seq: self.next_seq,
            queue_below: first(&self.queue)?,
            dead_below: first(&self.dead)?,
            quarantine_below: first(&self.quarantine)?,
            queue_records: self.stats.records,
            queue_spans: self.stats.spans,
            dead_records: self.stats.dead_letter_records,
            dead_spans: self.stats.dead_letter_spans,
            quarantined: self.stats.quarantined_records,
            replay: self.replay,
        })
    }

    /// [`Spool::push`] without the sync: not durable until [`Spool::commit`].
    pub fn append(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
        self.append_records(service, spans, created_unix_ms)?;
        Ok(self.take_dropped())
    }

    /// Spans dropped to make room since the last call (also after a failed
    /// push, whose drops were still made).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unreported)
    }

    fn record_error(&self, source: RecordError) -> SpoolError {
        SpoolError::Record {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Writes `spans` as queue records (unsynced); returns each record's
    /// key, size and span count.
    fn append_records(
        &mut self,
        service: &str,
        spans: &[Span],
        created_unix_ms: u64,
    ) -> Result<Vec<(u64, usize, u32)>, SpoolError> {
        let prepared = prepare(service, spans, created_unix_ms).map_err(|e| self.record_error(e))?;
        self.insert_prepared(prepared)
    }

    /// [`Spool::append`] of records [`prepare`]d elsewhere (the encoding is
    /// most of an append's work, and need not run where the spool is).
    pub fn append_prepared(&mut self, prepared: Prepared) -> Result<u64, SpoolError> {
        self.insert_prepared(prepared)?;
        Ok(self.take_dropped())
    }

    /// Numbers `prepared`'s records, makes room under the cap and inserts
    /// them (unsynced); returns each record's key, size and span count.
    fn insert_prepared(&mut self, prepared: Prepared) -> Result<Vec<(u64, usize, u32)>, SpoolError> {
        if prepared.records.is_empty() {
            return Ok(Vec::new());
        }
        let incoming: u64 = prepared.records.iter().map(|(r, _)| r.len() as u64).sum();
        self.make_room(incoming)?;
        let mut batch = sled::Batch::default();
        let mut written = Vec::with_capacity(prepared.records.len());
        for (mut bytes, n) in prepared.records {
            let key = self.next_seq;
            self.next_seq += 1;
            record::set_seq(&mut bytes, key);
            written.push((key, bytes.len(), n));
            batch.insert(&key.to_be_bytes(), bytes);
        }
        self.queue.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        for &(key, bytes, n) in &written {
            self.ages.insert(key, prepared.created_unix_ms);
            self.stats.records += 1;
            self.stats.bytes += bytes as u64;
            self.stats.spans += u64::from(n);
        }
        Ok(written)
    }

    /// Drops the oldest records until `incoming` more bytes fit the cap,
    /// adding their spans to the unreported drops.
    fn make_room(&mut self, incoming: u64) -> Result<(), SpoolError> {
        self.measure(incoming);
        let budget = (self.max_bytes as f64 * CAP_HEADROOM / self.amplification) as u64;
        if self.stats.bytes + incoming <= budget {
            return Ok(());
        }
        // Choose the oldest records to drop, tell the ledger, then drop them.
        let mut victims = Vec::new();
        let (mut bytes, mut spans) = (self.stats.bytes, 0);
        for item in self.queue.iter() {
            if bytes + incoming <= budget {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            bytes -= (v.len() as u64).min(bytes);
            spans += declared_spans(&v);
            victims.push((be(&k), v.len(), declared_spans(&v)));
        }
        self.remove_oldest(&victims)?;
        self.dropped_unreported += spans;
        Ok(())
    }

    /// Removes `victims` (the oldest queue records: key, bytes, spans),
    /// telling the ledger first.
    fn remove_oldest(&mut self, victims: &[(u64, usize, u64)]) -> Result<(), SpoolError> {
        let Some(&(last, _, _)) = victims.last() else {
            return Ok(());
        };
        let durable = self.durable_of(victims.iter().map(|&(k, _, n)| (k, n)));
        self.lower_ledger(durable, Some(last))?;
        for &(key, bytes, n) in victims {
            if self
                .queue
                .remove(key.to_be_bytes())
                .map_err(|e| self.storage(e))?
                .is_some()
            {
                self.forget(key, bytes, n);
                self.forget_durable(key, n);
            }
        }
        Ok(())
    }

    /// Drops records created more than `max_age_ms` before `now_unix_ms`,
    /// oldest first; returns how many spans that dropped. A record whose
    /// header cannot be read is left for replay to quarantine.
    pub fn expire(&mut self, now_unix_ms: u64, max_age_ms: u64) -> Result<u64, SpoolError> {
        let cutoff = now_unix_ms.saturating_sub(max_age_ms);
        let (mut victims, mut spans) = (Vec::new(), 0);
        for item in self.queue.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let Ok(h) = record::header(&v) else { break };
            if h.meta.created_unix_ms >= cutoff {
                break;
            }
            spans += u64::from(h.spans);
            victims.push((be(&k), v.len(), u64::from(h.spans)));
        }
        if victims.is_empty() {
            return Ok(0);
        }
        self.remove_oldest(&victims)?;
        Ok(spans)
    }

    fn forget(&mut self, key: u64, bytes: usize, spans: u64) {
        self.ages.remove(key);
        self.stats.records = self.stats.records.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(bytes as u64);
        self.stats.spans = self.stats.spans.saturating_sub(spans);
    }

    /// Every record of `part`, oldest first, read lazily.
    pub fn entries(&self, part: Part) -> impl Iterator<Item = Result<Entry, SpoolError>> + '_ {
        self.tree(part)
            .iter()
            .map(move |item| item.map(|(k, v)| Entry::read(part, &k, v)).map_err(|e| self.storage(e)))
    }

    /// The record `key` of `part`, decoded, if it is there.
    pub fn get(&self, part: Part, key: u64) -> Result<Option<Entry>, SpoolError> {
        let raw = self.tree(part).get(key.to_be_bytes()).map_err(|e| self.storage(e))?;
        Ok(raw.map(|v| Entry::read(part, &key.to_be_bytes(), v)))
    }

    /// Up to `max_records` of the oldest records of `part`, decoded.
    pub fn oldest(&self, part: Part, max_records: usize) -> Result<Vec<Entry>, SpoolError> {
        self.entries(part).take(max_records).collect()
    }

    /// The quarantined records, by the key they had in the queue, bytes as
    /// they were found.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), SpoolError>> + '_ {
        self.quarantine.iter().map(move |item| {
            item.map(|(k, v)| match state::unquarantine(&v) {
                Some((q, raw)) => (q.queue_key, raw.to_vec()),
                // Written before quarantined records were framed.
                None => (be(&k), v.to_vec()),
            })
            .map_err(|e| self.storage(e))
        })
    }

    /// Removes a delivered record, synced: see the module docs.
    ///
    /// On an error the counts still include the record: whether its removal
    /// reached the disk is known only once the spool is reopened (sled stays
    /// failed after an I/O error), so the caller must look again there.
    pub fn ack(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        self.settle(entry, |_| Ok(()))
    }

    /// Runs `keep` (what the record leaves behind, if anything), removes
    /// `entry` and syncs; on an error puts the counts back as they were
    /// (see [`Spool::ack`]).
    fn settle(
        &mut self,
        entry: &Entry,
        keep: impl FnOnce(&mut Self) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        let before = self.stats;
        let result = keep(self).and_then(|()| self.remove(entry));
        if result.is_err() {
            self.stats = before;
        }
        result
    }

    /// Removes `entry` from its tree (unsynced) and updates the counts.
    fn remove(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        if entry.part == Part::Queue {
            let oldest = self.queue.first().map_err(|e| self.storage(e))?.map(|(k, _)| be(&k));
            let through = (oldest == Some(entry.key)).then_some(entry.key);
            let durable = self.durable_of(std::iter::once((entry.key, entry.declared_spans)));
            self.lower_ledger(durable, through)?;
        }
        let removed = self
            .tree(entry.part)
            .remove(entry.key.to_be_bytes())
            .map_err(|e| self.storage(e))?
            .is_some();
        if !removed {
            return Ok(());
        }
        match entry.part {
            Part::Queue => {
                self.forget(entry.key, entry.bytes, entry.declared_spans);
                self.forget_durable(entry.key, entry.declared_spans);
            }
            Part::Dead => {
                self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(1);
                self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(entry.declared_spans);
            }
        }
        Ok(())
    }

    /// Keeps `service`'s spans the collector refused for good in the
    /// dead-letter tree, under a fresh sequence number (unsynced).
    fn put_dead(&mut self, service: &str, refused: &[Span], created_unix_ms: u64) -> Result<(), SpoolError> {
        if refused.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let meta = Meta {
            seq: self.next_seq,
            part: Part::Dead,
            created_unix_ms,
        };
        if let Err(e) = record::encode(service, refused, meta, &mut self.buf) {
            return Err(self.record_error(e));
        }
        let key = self.next_seq;
        self.next_seq += 1;
        self.dead
            .insert(key.to_be_bytes(), self.buf.as_slice())
            .map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        self.stats.dead_letter_records += 1;
        self.stats.dead_letter_spans += refused.len() as u64;
        Ok(())
    }

    /// Keeps `service`'s spans the collector refused for good in the
    /// dead-letter tree. Durable at the next [`Spool::commit`].
    pub fn add_dead(&mut self, service: &str, refused: &[Span], created_unix_ms: u64) -> Result<(), SpoolError> {
        self.put_dead(service, refused, created_unix_ms)
    }

    /// Removes `entry`, keeping the `refused` spans as a dead letter (the
    /// rest were delivered). Durable at the next [`Spool::commit`]; on an
    /// error as [`Spool::ack`].
    pub fn dead_letter(&mut self, entry: &Entry, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
        self.settle(entry, |s| s.put_dead(&entry.service, refused, now_unix_ms))
    }

    /// Moves a record that failed its checks to quarantine, bytes intact.
    /// Durable at the next [`Spool::commit`]; on an error as [`Spool::ack`].
    pub fn quarantine(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        self.settle(entry, |s| {
            let key = s.next_seq;
            s.next_seq += 1;
            s.quarantine
                .insert(key.to_be_bytes(), state::quarantine_frame(key, entry.key, &entry.raw))
                .map_err(|e| s.storage(e))?;
            s.meta
                .insert(NEXT_SEQ, &s.next_seq.to_be_bytes())
                .map_err(|e| s.storage(e))?;
            s.stats.quarantined_records += 1;
            Ok(())
        })
    }

    /// Empties `tree`; says what went. Durable at the next [`Spool::commit`].
    pub fn clear(&mut self, tree: Tree) -> Result<Cleared, SpoolError> {
        if tree == Tree::Queue {
            let last = self.queue.last().map_err(|e| self.storage(e))?.map(|(k, _)| be(&k));
            self.write_ledger(0, last)?;
        }
        let t = match tree {
            Tree::Queue => &self.queue,
            Tree::Dead => &self.dead,
            Tree::Quarantine => &self.quarantine,
        };
        let mut c = Cleared::default();
        while let Some((_, v)) = t.pop_min().map_err(|e| self.storage(e))? {
            c.records += 1;
            c.bytes += v.len() as u64;
            if tree != Tree::Quarantine {
                c.spans += declared_spans(&v);
            }
        }
        match tree {
            Tree::Queue => {
                self.ages.clear();
                let (records, spans, bytes) = (self.stats.records, self.stats.spans, self.stats.bytes);
                self.stats.records = records.saturating_sub(c.records);
                self.stats.spans = spans.saturating_sub(c.spans);
                self.stats.bytes = bytes.saturating_sub(c.bytes);
                self.durable_spans = 0;
            }
            Tree::Dead => {
                self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(c.records);
                self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(c.spans);
            }
            Tree::Quarantine => {
                self.stats.quarantined_records = self.stats.quarantined_records.saturating_sub(c.records);
            }
        }
        Ok(c)
    }

    /// Syncs sled's files (see [`durable`]) without touching the ledger.
    fn sync(&mut self) -> Result<(), SpoolError> {
        self.syncer.sync(&self.db).map_err(|e| match e {
            durable::SyncError::Sled(source) => SpoolError::Storage {
                dir: self.dir.clone(),
                source,
            },
            durable::SyncError::Io(source) => SpoolError::Sync {
                dir: self.dir.clone(),
                source,
            },
        })
    }
}

/// Renames `dir` to `<dir>.damaged-<unix seconds>` (for [`salvage`]) and
/// returns the new path.
pub fn move_aside(dir: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".damaged-{secs}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(dir, &aside)?;
    Ok(aside)
}

/// Counts what the trees hold.
fn count(
    queue: &sled::Tree,
    dead: &sled::Tree,
    quarantine: &sled::Tree,
) -> Result<(SpoolStats, ages::Ages), sled::Error> {
    let mut stats = SpoolStats::default();
    let mut ages = ages::Ages::default();
    for item in queue.iter() {
        let (k, v) = item?;
        if let Ok(h) = record::header(&v) {
            ages.insert(be(&k), h.meta.created_unix_ms);
        }
        stats.records += 1;
        stats.bytes += v.len() as u64;
        stats.spans += declared_spans(&v);
    }
    for item in dead.iter() {
        let (_, v) = item?;
        stats.dead_letter_records += 1;
        stats.dead_letter_spans += declared_spans(&v);
    }
    stats.quarantined_records = quarantine.len() as u64;
    Ok((stats, ages))
}

/// The span count a record's header declares; 0 when it is unreadable.
fn declared_spans(record: &[u8]) -> u64 {
    record::header(record).map_or(0, |h| u64::from(h.spans))
}

/// Opens sled over `dir`, waiting up to `lock_wait` for its lock (sled
/// lets go of it a moment after the last owner in this process dropped it,
/// once its I/O threads are done). A panic inside sled (it panics over some
/// damaged files) is caught and reported as damage.
fn open_sled(dir: &Path, lock_wait: Duration) -> Result<sled::Db, SpoolError> {
    let deadline = Instant::now() + lock_wait;
    loop {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(1000));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(io))) if is_lock_error(&io) => {
                if Instant::now() >= deadline {
                    return Err(SpoolError::InUse { dir: dir.to_path_buf() });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Err(source)) => {
                return Err(SpoolError::Storage {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                return Err(SpoolError::Storage {
                    dir: dir.to_path_buf(),
                    source: sled::Error::ReportableBug(format!("sled panicked opening the files: {why}")),
                });
            }
        }
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::span::{Kind, Status, Value};

    #[test]
    fn sled_errors_are_said_for_people() {
        let dir = PathBuf::from("/srv/spool");
        let said = |source| {
            SpoolError::Storage {
                dir: dir.clone(),
                source,
            }
            .to_string()
        };
        let corrupt = said(sled::Error::Corruption { at: None, bt: () });
        assert!(
            corrupt.starts_with("spool /srv/spool: sled found its files damaged;"),
            "{corrupt}"
        );
        assert!(!corrupt.contains("backtrace") && !corrupt.contains("None"), "{corrupt}");
        let denied = said(sled::Error::Io(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        )));
        assert!(denied.contains("check the owner and mode"), "{denied}");
        assert!(!denied.contains("kind:"), "{denied}");
    }

    pub(super) fn spans(n: usize, tag: &str) -> Vec<Span> {
        (0..n)
            .map(|i| Span {
                trace_id: [1; 16],
                span_id: (i as u64 + 1).to_be_bytes(),
                parent_id: None,
                name: format!("{tag}-{i}").into(),
                kind: Kind::Server,
                start_unix_nanos: 1,
                end_unix_nanos: 2,
                status: Status::Ok,
                // Random, so records cannot deflate below the split size.
                attributes: vec![(
                    "k".into(),
                    Value::String((0..100).map(|_| fastrand::alphanumeric()).collect()),
                )],
                events: Default::default(),
                dropped_attributes: 0,
                dropped_events: 0,
            })
            .collect()
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .flat_map(|e| e.spans.as_ref().unwrap().iter().map(|s| s.name.to_string()))
            .collect()
    }

    #[test]
    fn fifo_across_reopen_and_records_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
            s.push("svc", &spans(2000, "a"), 1).unwrap();
            s.push("svc", &spans(3, "b"), 2).unwrap();
            assert_eq!(s.stats().spans, 2003);
        }
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.stats().spans, 2003);
        let all = s.oldest(Part::Queue, usize::MAX).unwrap();
        assert!(all.len() > 2, "2000 spans of ~150 bytes must be split");
        assert!(all.iter().all(|e| e.bytes <= RECORD_TARGET + record::HEADER_LEN));
        let got = names(&all);
        assert_eq!(got.first().map(String::as_str), Some("a-0"));
        assert_eq!(got.last().map(String::as_str), Some("b-2"));
        assert_eq!(got.len(), 2003);
        for e in &all[..all.len() - 1] {
            s.ack(e).unwrap();
        }
        s.push("svc", &spans(1, "c"), 3).unwrap();
        let rest = names(&s.oldest(Part::Queue, 10).unwrap());
        assert_eq!(rest, ["b-0", "b-1", "b-2", "c-0"]);
    }

    #[test]
    fn records_sled_loses_behind_the_spools_back_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
            for i in 0..3 {
                s.push("svc", &spans(10, &format!("r{i}")), 1).unwrap();
            }
            // Removals through the spool keep the ledger in step.
            let first = s.oldest(Part::Queue, 1).unwrap();
            s.ack(&first[0]).unwrap();
        }
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.take_damage(), None, "acknowledged records are not a loss");
        drop(s);
        {
            // What sled does to a damaged log: a record vanishes, no error.
            let db = sled::open(dir.path()).unwrap();
            let queue = db.open_tree("queue").unwrap();
            queue.pop_max().unwrap().unwrap();
            db.flush().unwrap();
        }
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        let damage = Damage {
            expected_spans: 20,
            found_spans: 10,
            lost_spans: 10,
            ..Damage::default()
        };
        assert_eq!(s.take_damage(), Some(damage));
        assert_eq!(s.take_damage(), None);
        drop(s);
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.take_damage(), None, "reported once, not at every start");
    }

    #[test]
    fn second_opener_is_told_the_directory_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), u64::MAX).unwrap();
        let err = Spool::open(dir.path(), u64::MAX).err().expect("second open must fail");
        assert!(matches!(err, SpoolError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn cap_drops_oldest_and_reports_spans() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 20_000).unwrap();
        let mut dropped = 0;
        for i in 0..10 {
            dropped += s.push("svc", &spans(50, &format!("r{i}")), i).unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= 20_000, "{st:?}");
        assert_eq!(st.spans + dropped, 500);
        let names = names(&s.oldest(Part::Queue, usize::MAX).unwrap());
        assert_eq!(names.last().map(String::as_str), Some("r9-49"), "newest kept");
        assert!(!names.iter().any(|n| n.starts_with("r0-")), "oldest dropped");
    }

    #[test]
    fn expire_drops_only_records_past_the_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.push("svc", &spans(3, "old"), 1_000).unwrap();
        s.push("svc", &spans(4, "older-but-kept"), 2_600).unwrap();
        s.push("svc", &spans(5, "new"), 3_000).unwrap();
        assert_eq!(s.expire(3_500, 1_000).unwrap(), 3);
        assert_eq!(s.stats().spans, 9);
        assert_eq!(names(&s.oldest(Part::Queue, 1).unwrap())[0], "older-but-kept-0");
        assert_eq!(s.expire(3_500, 1_000).unwrap(), 0);
    }

    #[test]
    fn dead_letters_and_quarantine_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.push("svc", &spans(2, "x"), 1).unwrap();
        s.push("svc", &spans(2, "y"), 1).unwrap();
        let entries = s.oldest(Part::Queue, 2).unwrap();
        let refused = &entries[0].spans.as_ref().unwrap()[..1];
        s.dead_letter(&entries[0], refused, 5).unwrap();
        s.quarantine(&entries[1]).unwrap();
        let st = s.stats();
        assert_eq!(
            (st.records, st.spans, st.dead_letter_spans, st.quarantined_records),
            (0, 0, 1, 1)
        );
        drop(s);
        let s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.stats().dead_letter_spans, 1);
        assert_eq!(s.stats().quarantined_records, 1);
        // Sequence numbers are never reused, even with the queue empty.
        let mut s = s;
        s.push("svc", &spans(1, "z"), 1).unwrap();
        assert!(s.oldest(Part::Queue, 1).unwrap()[0].key >= 2);
    }
}

#[cfg(test)]
mod disk_cap {
    use super::*;

    /// The cap bounds sled's size on disk, not just the record bytes: 60 MB
    /// of incompressible records pushed through a 16 MiB cap.
    #[test]
    fn the_cap_bounds_the_size_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 16u64 << 20;
        let mut s = Spool::open(dir.path(), cap).unwrap();
        let batch = tests::spans(400, "x");
        let (mut dropped, mut peak) = (0, 0);
        for i in 0..1000 {
            dropped += s.push("svc", &batch, i).unwrap();
            peak = peak.max(s.size_on_disk());
        }
        assert_eq!(s.stats().spans + dropped, 400 * 1000, "every span spooled or counted");
        assert!(dropped > 0);
        // sled grows in 512 KiB segments: allow one.
        assert!(
            peak <= cap + (512 << 10),
            "peak {peak} bytes on disk over a cap of {cap}"
        );
        assert!(s.amplification() > 1.0, "measured: {}", s.amplification());
    }
}
