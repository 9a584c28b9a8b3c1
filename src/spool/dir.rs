//! The spool directory itself: what may be opened as a spool, who holds
//! it, and where damaged files are set aside.
//!
//! - **What is a spool**: a directory that is empty, or holds one of the
//!   files a spool has (`conf`, `db`, the ledger, the lock, `blobs/`). A
//!   path that is a file, or a directory of other things, is refused,
//!   naming it: nothing of the user's is ever moved or written over.
//! - **Who holds it**: a writer (the tracer, replay, purge, salvage) holds
//!   an exclusive lock on [`super::LOCK_FILE`] from before it checks the
//!   files until it closes (sled then takes its own on `db`). A reader
//!   (inspect, verify, export, a dry run) takes shared locks on both files
//!   if they exist, opened read-only, and creates nothing. Either fails at
//!   once, or after a bounded wait, when the other holds it.
//! - **Set aside**: damaged files are moved, by rename within the
//!   directory, into `set-aside/<unix ms>-<pid>-<n>/`, a name that cannot
//!   collide, and both directories are synced; nothing is deleted.
//! - **Private, and not planted**: spans are user data. The directory is
//!   created 0700 and every file in it 0600, whatever the umask; sled's own
//!   files are tightened right after it creates them, and a spool found
//!   with looser modes is tightened on open. Before anything opens a spool
//!   for writing, the directory must be owned by this process's user (or
//!   root) and not writable by group or others (OpenSSH's StrictModes
//!   rule), every directory above it (the link resolved) owned by the user
//!   or root and, if writable by group or others, sticky (as `/tmp` is: no
//!   one else can swap the spool for theirs), and none of the entries a
//!   spool has may be a symbolic link: otherwise it is refused, naming the
//!   path, the owner and the mode. The spool path itself may be a symbolic
//!   link to a directory that passes.

use super::SpoolError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where set-aside files go, inside the spool directory.
pub(crate) const SET_ASIDE: &str = "set-aside";

/// Entries a spool directory may hold.
const SPOOL_ENTRIES: [&str; 5] = ["conf", "db", "blobs", super::ledger::FILE, super::LOCK_FILE];

/// Whether `dir` holds a spool's files.
pub(crate) fn holds_spool(dir: &Path) -> bool {
    SPOOL_ENTRIES[..4].iter().any(|e| dir.join(e).exists())
}

/// Refuses a path that cannot be a spool directory (see the module docs);
/// `Ok(false)` if nothing is there yet.
pub(crate) fn check_path(dir: &Path) -> Result<bool, SpoolError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(SpoolError::Io {
                dir: dir.to_path_buf(),
                what: "cannot read",
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(SpoolError::NotASpool {
            dir: dir.to_path_buf(),
            why: "it is not a directory".into(),
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|source| SpoolError::Io {
        dir: dir.to_path_buf(),
        what: "cannot list",
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(false);
    }
    let ours = |n: &str| SPOOL_ENTRIES.contains(&n) || n == SET_ASIDE || n.starts_with("snap.");
    if !names.iter().any(|n| SPOOL_ENTRIES[..4].contains(&n.as_str())) {
        let other: Vec<&String> = names.iter().filter(|n| !ours(n)).take(3).collect();
        return Err(SpoolError::NotASpool {
            dir: dir.to_path_buf(),
            why: format!(
                "it holds other files ({})",
                other.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(true)
}

/// The spool's entries that spillway or sled create, by kind.
fn expected_entries(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = ["conf", "db", super::ledger::FILE, super::LOCK_FILE]
        .iter()
        .map(|n| (dir.join(n), false))
        .collect();
    out.push((dir.join("blobs"), true));
    // Damaged files are moved in here and `purge --set-aside` deletes what
    // it holds: a link would send both elsewhere.
    out.push((dir.join(SET_ASIDE), true));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("snap.") {
                out.push((e.path(), false));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("blobs")) {
        for e in entries.flatten() {
            out.push((e.path(), false));
        }
    }
    out
}

/// Why another user could swap a directory that user `me` spills into, if
/// one could: it is not owned by `me` or root, or it is writable by group
/// or others; for a directory `above` the spool, sticky (as `/tmp` is)
/// will do.
fn untrusted(m: &std::fs::Metadata, me: u32, above: bool) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let whose = if above {
        "a directory above the spool is"
    } else {
        "it is"
    };
    if m.uid() != me && m.uid() != 0 {
        return Some(format!(
            "{whose} owned by uid {}, not by this process's user (uid {me}) or root",
            m.uid()
        ));
    }
    let mode = m.permissions().mode() & 0o7777;
    let shared = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    match (shared, above) {
        (false, _) => None,
        (true, true) if sticky => None,
        (true, true) => Some(format!(
            "a directory above the spool has mode {mode:04o}: writable by group or others and not sticky, so another user could swap the spool for theirs"
        )),
        (true, false) => Some(format!("its mode is {mode:04o}: writable by group or others")),
    }
}

/// Refuses a spool directory that could have been planted (see the module
/// docs): owned by another user, writable by group or others, or an entry
/// that is a symbolic link or of the wrong kind. `writer`: the owner and
/// mode rules apply (a reader only refuses links).
pub fn check_trust(dir: &Path, writer: bool) -> Result<(), SpoolError> {
    let insecure = |path: &Path, why: String| SpoolError::Insecure {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(dir).map_err(|source| SpoolError::Io {
        dir: dir.to_path_buf(),
        what: "cannot read",
        source,
    })?;
    if writer {
        let me = rustix::process::geteuid().as_raw();
        // The spool itself, then every directory above it (the link
        // resolved): see `untrusted`.
        let real = std::fs::canonicalize(dir).map_err(|source| SpoolError::Io {
            dir: dir.to_path_buf(),
            what: "cannot resolve",
            source,
        })?;
        if let Some(why) = untrusted(&meta, me, false) {
            return Err(insecure(dir, why));
        }
        for path in real.ancestors().skip(1) {
            if let Some(why) = std::fs::metadata(path).ok().and_then(|m| untrusted(&m, me, true)) {
                return Err(insecure(path, why));
            }
        }
    }
    for (path, is_dir) in expected_entries(dir) {
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_symlink() {
            return Err(insecure(&path, "it is a symbolic link".into()));
        }
        if is_dir && !m.is_dir() {
            return Err(insecure(&path, "it is not a directory".into()));
        }
        if !is_dir && !m.is_file() {
            return Err(insecure(&path, "it is not a regular file".into()));
        }
    }
    Ok(())
}

/// Makes the spool private: the directory and `blobs/` 0700, every file
/// 0600 (sled creates its files with the umask's modes, and an older
/// version may have left them wider).
pub(crate) fn tighten(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fix = |path: &Path, want: u32| -> io::Result<()> {
        let Ok(m) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        if m.file_type().is_symlink() {
            return Ok(());
        }
        if m.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
        }
        Ok(())
    };
    fix(dir, 0o700)?;
    for (path, is_dir) in expected_entries(dir) {
        fix(&path, if is_dir { 0o700 } else { 0o600 })?;
    }
    Ok(())
}

/// Creates the spool directory, private (0700), with any missing parents.
pub(crate) fn create(dir: &Path) -> Result<(), SpoolError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SpoolError::Io {
            dir: dir.to_path_buf(),
            what: "cannot create",
            source,
        })
}

/// Opens `path` to read and write, created 0600 if missing, refusing a
/// symbolic link there (a planted link must not redirect spillway's own
/// files).
pub(crate) fn open_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// ` (pid N holds DIR/spillway.lock)` when the lock file names a process
/// that is running, else nothing: for [`SpoolError::InUse`].
pub(crate) fn holder_note(dir: &Path) -> String {
    let lock = dir.join(super::LOCK_FILE);
    let pid = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists());
    pid.map_or_else(String::new, |pid| format!(" (pid {pid} holds {})", lock.display()))
}

/// The writer's lock on `dir`, held until dropped; the lock file names the
/// holder's pid.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Takes the exclusive lock, waiting up to `wait` for an owner letting
    /// go; [`SpoolError::InUse`] after that.
    pub fn exclusive(dir: &Path, wait: Duration) -> Result<Lock, SpoolError> {
        let file = open_private(&dir.join(super::LOCK_FILE)).map_err(|source| SpoolError::Io {
            dir: dir.to_path_buf(),
            what: "cannot open the lock file of",
            source,
        })?;
        match within(wait, || file.try_lock()) {
            Ok(()) => {
                // Who holds it, for whoever is refused (best effort).
                let me = format!("{}\n", std::process::id());
                let _ = file.set_len(0).and_then(|()| file.write_all_at(me.as_bytes(), 0));
                Ok(Lock(file))
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::InUse { dir: dir.to_path_buf() }),
            Err(std::fs::TryLockError::Error(source)) => Err(SpoolError::Io {
                dir: dir.to_path_buf(),
                what: "cannot lock",
                source,
            }),
        }
    }
}

/// Calls `try_lock` every 10 ms until it takes the lock, fails otherwise,
/// or `wait` has passed: a holder letting go (a closing owner, or a fork
/// of one that holds its descriptors until it execs) is waited for.
fn within(
    wait: Duration,
    mut try_lock: impl FnMut() -> Result<(), std::fs::TryLockError>,
) -> Result<(), std::fs::TryLockError> {
    let deadline = Instant::now() + wait;
    loop {
        match try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A reader's shared locks on `dir` (the lock file and sled's `db`, those
/// that exist); opens nothing for writing, creates nothing.
#[derive(Debug)]
pub struct ReadLock(#[allow(dead_code)] Vec<File>);

impl ReadLock {
    /// Takes the shared locks, waiting up to `wait` for a writer letting
    /// go; [`SpoolError::InUse`] after that.
    pub fn shared(dir: &Path, wait: Duration) -> Result<ReadLock, SpoolError> {
        let mut held = Vec::new();
        for name in [super::LOCK_FILE, "db"] {
            let file = match File::open(dir.join(name)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SpoolError::Io {
                        dir: dir.to_path_buf(),
                        what: "cannot open",
                        source,
                    });
                }
            };
            match within(wait, || file.try_lock_shared()) {
                Ok(()) => held.push(file),
                Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::InUse { dir: dir.to_path_buf() }),
                // A filesystem without locks: read anyway.
                Err(std::fs::TryLockError::Error(_)) => {}
            }
        }
        Ok(ReadLock(held))
    }
}

/// Moves every spool file of `dir` into a fresh `set-aside/<name>/`, by
/// rename, and syncs both directories; returns where.
pub(crate) fn set_aside(dir: &Path) -> io::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let ms = crate::clock::Clock::now_unix_ms(&crate::clock::SystemClock);
    let parent = dir.join(SET_ASIDE);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&parent)?;
    let name = format!("{ms}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let to = parent.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&to)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == SET_ASIDE || name == super::LOCK_FILE {
            continue;
        }
        std::fs::rename(entry.path(), to.join(&name))?;
    }
    super::durable::sync_dir(&to)?;
    super::durable::sync_dir(&parent)?;
    super::durable::sync_dir(dir)?;
    Ok(to)
}

/// The set-aside directories of `dir`, oldest first.
pub fn set_asides(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join(SET_ASIDE))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
