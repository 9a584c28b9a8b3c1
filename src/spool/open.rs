//! Opening a spool: the path checked (a directory of its own, not planted
//! or tampered with), the writer's lock taken, the files checked *before*
//! sled sees them (sled's recovery zeroes what follows a damaged entry),
//! damaged files set aside and salvaged back, then sled opened, the trees
//! counted, the ledger compared, and any salvage cut short resumed.

use super::{
    AMPLIFICATION_GUESS, Damage, LOCK_WAIT, Ledger, NEXT_SEQ, STATE, Spool, SpoolError, SpoolStats, ages, be, check,
    declared_spans, dir, durable, ledger, record, salvage, sled_log, state, view,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// Before sled sees the files, the spool is checked (`check`): a
    /// damaged one is set aside (its bytes kept, see `dir`) and its sound
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
    pub(super) fn open_salvaging(
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
    pub(super) fn resume_salvages(&mut self) -> Result<(), SpoolError> {
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
    pub(super) fn assemble(dir: &Path, db: sled::Db, max_bytes: u64, lock: dir::Lock) -> Result<Spool, SpoolError> {
        let storage = |source| SpoolError::Storage {
            dir: dir.to_path_buf(),
            source,
        };
        // sled created its files with the umask's modes: private, before
        // any span is written.
        dir::tighten(dir).map_err(|source| SpoolError::Io {
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
            lowered_for: Vec::new(),
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
    pub(super) fn check(&mut self, owed: ledger::State) -> Result<(), SpoolError> {
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
}

/// Counts what the trees hold.
pub(super) fn count(
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

/// Opens sled over `dir`, waiting up to `lock_wait` for its lock (sled
/// lets go of it a moment after the last owner in this process dropped it,
/// once its I/O threads are done). A panic inside sled (it panics over some
/// damaged files) is caught and reported as damage.
pub(super) fn open_sled(dir: &Path, lock_wait: Duration) -> Result<sled::Db, SpoolError> {
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
