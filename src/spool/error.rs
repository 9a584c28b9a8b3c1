//! What can go wrong with a spool, typed, and said once for people: sled's
//! own messages for some errors are debug dumps, so [`SpoolError`] renders
//! them as what happened and what to do.

use super::dir;
use super::record::RecordError;
use std::path::PathBuf;

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

pub(super) fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
