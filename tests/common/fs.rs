//! Loop-mounted filesystem images for the tests that need a filesystem of
//! their own: power cuts (shut down without flushing the log), read-only
//! mounts, stalls (frozen). Needs root; each mount is undone when the value
//! goes.

use std::path::PathBuf;
use std::process::{Child, Command};

pub fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem image in a temporary directory, mounted on demand; the
/// mount is undone when it goes out of scope, whatever happened.
pub struct Fs {
    img: PathBuf,
    mnt: PathBuf,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl Fs {
    pub fn new(kind: &'static str) -> Fs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join(format!("{kind}.img"));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // XFS wants 300 MB at least; the file is sparse.
        sh(Command::new("truncate").args(["-s", "320M"]).arg(&img));
        match kind {
            "xfs" => sh(Command::new("mkfs.xfs").arg("-q").arg(&img)),
            _ => sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)),
        }
        let mut fs = Fs {
            img,
            mnt,
            mounted: false,
            _dir: dir,
        };
        fs.mount();
        fs
    }

    pub fn mount(&mut self) {
        sh(Command::new("mount").args(["-o", "loop"]).arg(&self.img).arg(&self.mnt));
        self.mounted = true;
    }

    /// Mounts the image read-only.
    pub fn mount_read_only(&mut self) {
        sh(Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(&self.img)
            .arg(&self.mnt));
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        sh(Command::new("umount").arg(&self.mnt));
        self.mounted = false;
    }

    /// The power cut: the filesystem stops, its log not flushed.
    pub fn cut(&self) {
        sh(Command::new("xfs_io").args(["-x", "-c", "shutdown"]).arg(&self.mnt));
    }

    /// Cut, kill `child`, and come back up: unmount, mount (log recovery).
    pub fn cut_and_restart(&mut self, child: &mut Child) {
        self.cut();
        let _ = child.kill();
        let _ = child.wait();
        self.unmount();
        self.mount();
    }

    /// A stalled disk: every write to the filesystem waits until [`Fs::thaw`].
    pub fn freeze(&self) {
        sh(Command::new("fsfreeze").arg("-f").arg(&self.mnt));
    }

    pub fn thaw(&self) {
        sh(Command::new("fsfreeze").arg("-u").arg(&self.mnt));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if self.mounted {
            // A test that failed while the filesystem was frozen.
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.mnt).output();
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // A process still holds it (the test failed mid-way): detach.
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
    }
}
