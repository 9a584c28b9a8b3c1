//! The durability point: what it takes for sled's writes to survive a power
//! cut, not only a killed process.
//!
//! sled 0.34.7's `Db::flush` writes its IO buffers and calls
//! `sync_file_range`, which neither flushes the drive's cache nor the file's
//! metadata (its size, freshly allocated extents), and sled writes blob
//! files, `conf` and snapshot renames without syncing them or their
//! directory. A page cache that a killed process leaves behind hides all of
//! that; a power cut does not (the project's power-cut tests lost every
//! record confirmed by `flush` alone in half the rounds on XFS). So
//! [`Syncer::sync`] runs, in this order:
//!
//! 1. `Db::flush` (sled writes what it buffers);
//! 2. `fdatasync` of the log (`db`): its data and the size that finds it;
//! 3. `fdatasync` of every blob file not synced before, then of `blobs/`
//!    when a blob was added or removed;
//! 4. `fdatasync` of every other new regular file (`conf`, a snapshot, the
//!    ledger), then of the spool directory when its entries changed (a file
//!    created, removed or renamed).
//!
//! Everything written before step 1 began is then on stable storage: that
//! is what one sync round covers, whoever wrote it. Directory listings are
//! a handful of entries, so a round costs the syncs themselves.
//!
//! Invariant: a call that returns `Ok` made durable every write sled had
//! accepted when it began; an `Err` promises nothing about this round (an
//! earlier `Ok` still holds).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The blob directory sled keeps large values in.
const BLOBS: &str = "blobs";

/// Makes a sled directory's writes durable; see the module docs.
#[derive(Debug)]
pub(crate) struct Syncer {
    dir: PathBuf,
    /// The log, opened once for syncing.
    log: Option<File>,
    /// Regular files of the directory as of the last round.
    files: BTreeSet<OsString>,
    /// Blob files as of the last round (each synced once).
    blobs: BTreeSet<OsString>,
}

impl Syncer {
    /// A syncer for the sled directory `dir`. Nothing counts as synced yet,
    /// so the first round syncs every file there.
    pub(crate) fn new(dir: &Path) -> Syncer {
        Syncer {
            dir: dir.to_path_buf(),
            log: None,
            files: BTreeSet::new(),
            blobs: BTreeSet::new(),
        }
    }

    /// Makes everything `db` accepted so far durable. See the module docs.
    pub(crate) fn sync(&mut self, db: &sled::Db) -> Result<(), SyncError> {
        db.flush().map_err(SyncError::Sled)?;
        self.sync_files().map_err(SyncError::Io)
    }

    /// Steps 2 to 4 of the module docs, without sled's flush: for files
    /// spillway wrote itself (a salvaged spool's directory after a rename).
    pub(crate) fn sync_files(&mut self) -> io::Result<()> {
        if self.log.is_none() {
            self.log = Some(File::open(self.dir.join("db"))?);
        }
        if let Some(log) = &self.log {
            log.sync_data()?;
        }
        let blob_dir = self.dir.join(BLOBS);
        let blobs = regular_files(&blob_dir)?;
        if blobs != self.blobs {
            for name in blobs.difference(&self.blobs) {
                private(&blob_dir.join(name));
                sync_file(&blob_dir.join(name))?;
            }
            sync_dir(&blob_dir)?;
            self.blobs = blobs;
        }
        let files = regular_files(&self.dir)?;
        if files != self.files {
            for name in files.difference(&self.files) {
                private(&self.dir.join(name));
                if name != "db" {
                    sync_file(&self.dir.join(name))?;
                }
            }
            sync_dir(&self.dir)?;
            self.files = files;
        }
        Ok(())
    }
}

/// Why a sync round failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// sled could not write its buffers.
    #[error("{0}")]
    Sled(sled::Error),
    /// A file or directory could not be synced.
    #[error("fsync: {0}")]
    Io(io::Error),
}

/// The regular files directly in `dir` (none if it does not exist).
fn regular_files(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.insert(entry.file_name());
        }
    }
    Ok(out)
}

/// Makes a file sled created private (0600), before its bytes are made
/// durable; a file that went meanwhile, or a link, is left alone.
fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.is_file()
        && m.permissions().mode() & 0o077 != 0
    {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

/// `fdatasync` of one file; a file that went meanwhile (sled removes old
/// snapshots and blobs) needs none.
fn sync_file(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `fsync` of a directory, so the entries created, removed or renamed in
/// it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_syncs_new_files_once_and_notices_removals() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut s = Syncer::new(dir.path());
        db.insert(b"k", b"v").unwrap();
        s.sync(&db).unwrap();
        assert!(s.files.contains(&OsString::from("conf")), "{:?}", s.files);
        std::fs::write(dir.path().join("extra"), b"x").unwrap();
        s.sync(&db).unwrap();
        assert!(s.files.contains(&OsString::from("extra")));
        std::fs::remove_file(dir.path().join("extra")).unwrap();
        s.sync(&db).unwrap();
        assert!(!s.files.contains(&OsString::from("extra")));
    }
}
