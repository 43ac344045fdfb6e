//! A small tmpfs for full-disk tests (`tests/disk_full.rs`, `tests/stable_store_full_disk.rs`):
//! mounting one needs root, and the tests that use it say so and skip without it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the length of a test; unmounted on drop, even after a panic.
pub struct Tmpfs {
    pub path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` at `path` (created if needed); `None`, with the
    /// reason printed, when this process may not mount (not root, no mount namespace).
    pub fn mount(path: &Path, size_bytes: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root; run this test as root");
            return None;
        }
        std::fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}")])
            .arg("tmpfs")
            .arg(path)
            .output();
        match output {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
                mounted: true,
            }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let plain = Command::new("umount").arg(&self.path).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Something still holds it open: detach it now, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Bytes free for unprivileged use on the filesystem holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> u64 {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    stats.f_bavail * stats.f_frsize
}
