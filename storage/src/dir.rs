//! Directory handles held open for as long as a store is open, so that the fsyncs and
//! listings a write depends on never need a new file descriptor.
//!
//! Why: a directory fsync used to be `File::open(dir)?.sync_all()`, and the stable store
//! listed its directories with `read_dir` (another descriptor) on every save. When client
//! sockets had used up `RLIMIT_NOFILE`, the next term change failed with EMFILE and stopped
//! the node (issue 12, `tests/bounded_connections.rs`). A descriptor opened when the store
//! opens, and kept, cannot run out later. Listing uses `getdents64` on that same
//! descriptor for the same reason (`opendir` would open a new one).
//!
//! The WAL reaches directories through the [`crate::wal::WalFs`] trait, by path. It holds
//! a [`DirHandle`] from [`DirHandle::open_registered`] while open, and [`sync_path`] (what
//! `StdFs::sync_dir` calls) fsyncs through the registered handle when there is one. The
//! registry holds only weak references: a handle lives exactly as long as its store.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// An open directory.
#[derive(Debug)]
pub struct DirHandle {
    file: File,
    path: PathBuf,
    /// Listing rewinds and reads the shared offset of the descriptor: one at a time.
    listing: Mutex<()>,
}

impl DirHandle {
    /// Opens `path`, which must be a directory.
    pub fn open(path: &Path) -> io::Result<DirHandle> {
        let file = File::open(path)?;
        if !file.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(DirHandle {
            file,
            path: path.to_path_buf(),
            listing: Mutex::new(()),
        })
    }

    /// Opens `path` and registers the handle, so that [`sync_path`] on the same path uses
    /// it for as long as the returned handle lives.
    pub fn open_registered(path: &Path) -> io::Result<Arc<DirHandle>> {
        let handle = Arc::new(DirHandle::open(path)?);
        let mut registry = lock(registry());
        registry.retain(|_, weak| weak.strong_count() > 0);
        registry.insert(path.to_path_buf(), Arc::downgrade(&handle));
        Ok(handle)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync: the directory's entries (creates, renames, unlinks) are durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// The directory's `(name, inode)` pairs without `.` and `..`, sorted, read from the
    /// held descriptor (`getdents64`), so no new descriptor is needed.
    pub fn entries(&self) -> io::Result<Vec<(OsString, u64)>> {
        let _one_at_a_time = lock(&self.listing);
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a descriptor we own; no memory is involved.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 << 10];
        let mut out = Vec::new();
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own.
            let read = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd,
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if read < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if read == 0 {
                break;
            }
            parse_dirents(&buf[..read as usize], &mut out)?;
        }
        out.sort();
        Ok(out)
    }
}

/// `struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }`,
/// records back to back, each `d_reclen` bytes, the name NUL-terminated.
fn parse_dirents(mut records: &[u8], out: &mut Vec<(OsString, u64)>) -> io::Result<()> {
    const NAME_OFFSET: usize = 19;
    let malformed = |what: &str| io::Error::other(format!("getdents64 returned {what}"));
    while !records.is_empty() {
        if records.len() < NAME_OFFSET {
            return Err(malformed("a truncated record"));
        }
        let inode = u64::from_ne_bytes(
            records[0..8]
                .try_into()
                .map_err(|_| malformed("a short inode"))?,
        );
        let len = u16::from_ne_bytes(
            records[16..18]
                .try_into()
                .map_err(|_| malformed("a short length"))?,
        ) as usize;
        if len < NAME_OFFSET || len > records.len() {
            return Err(malformed("a record length out of bounds"));
        }
        let name = &records[NAME_OFFSET..len];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        if name != b"." && name != b".." {
            out.push((OsString::from_vec(name.to_vec()), inode));
        }
        records = &records[len..];
    }
    Ok(())
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<DirHandle>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<DirHandle>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data stays consistent whatever panicked while holding the lock.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// fsyncs the directory at `path`: through its registered handle if a store holds one
/// (and it is still that directory), else through a descriptor opened for the purpose.
pub fn sync_path(path: &Path) -> io::Result<()> {
    let registered = lock(registry()).get(path).and_then(Weak::upgrade);
    if let Some(handle) = registered {
        // A directory removed and recreated at the same path is another directory: stat
        // needs no descriptor, so this check cannot fail for want of one.
        let same = match (std::fs::metadata(path), handle.file.metadata()) {
            (Ok(now), Ok(held)) => now.dev() == held.dev() && now.ino() == held.ino(),
            _ => false,
        };
        if same {
            return handle.sync();
        }
    }
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_read_dir() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..300 {
            std::fs::write(
                dir.path().join(format!("file-{i:04}-with-a-longish-name")),
                b"x",
            )
            .unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let handle = DirHandle::open(dir.path()).unwrap();
        let mut expected: Vec<(OsString, u64)> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::os::unix::fs::DirEntryExt::ino(&e))
            })
            .collect();
        expected.sort();
        assert_eq!(handle.entries().unwrap(), expected);
        // A second listing rewinds and sees changes made since.
        std::fs::remove_file(dir.path().join("file-0000-with-a-longish-name")).unwrap();
        assert_eq!(handle.entries().unwrap().len(), expected.len() - 1);
    }

    #[test]
    fn sync_path_uses_the_registered_handle_only_while_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let handle = DirHandle::open_registered(dir.path()).unwrap();
        sync_path(dir.path()).unwrap();
        drop(handle);
        assert!(lock(registry())
            .get(dir.path())
            .and_then(Weak::upgrade)
            .is_none());
        sync_path(dir.path()).unwrap();
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(parse_dirents(&[0u8; 10], &mut out).is_err());
        let mut record = vec![0u8; 24];
        record[16..18].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_dirents(&record, &mut out).is_err());
    }
}
