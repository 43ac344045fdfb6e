//! The thin filesystem layer under the WAL.
//!
//! Every call that changes durable state (create, write, fdatasync, rename, unlink,
//! directory fsync) goes through [`WalFs`], so tests can stop the WAL at any step and
//! check that what is left on disk recovers to the old or the new state. Reads go
//! through memory maps of the files and are not faultable.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The filesystem operations the WAL's durability depends on.
///
/// To ensure correctness, an implementation must make `sync_data` durable for every
/// byte written to that file before it returns, and `sync_dir` durable for every
/// create, rename and unlink in that directory.
pub trait WalFs: Send + Sync + Debug {
    /// Creates a new file for reading and writing; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Opens an existing file for reading and writing.
    fn open_rw(&self, path: &Path) -> io::Result<File>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs`, back to back, at `offset` (`pwritev`): the WAL writes
    /// large payloads from the appenders' buffers without copying them.
    fn write_vectored_at(&self, file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and the size, if it changed) are durable.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// `fallocate`: reserves `[0, len)` (reading as zeros) without writing it.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()>;
    /// Atomically renames `from` to `to` (same directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, unlinks) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl WalFs for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
    }

    fn open_rw(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        // pwritev takes at most IOV_MAX (1024 on Linux) buffers per call.
        const IOV_MAX: usize = 1024;
        let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut bufs: &mut [IoSlice<'_>] = &mut owned;
        let mut offset = offset;
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let count = bufs.len().min(IOV_MAX);
            let at = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::other("offset overflows off_t"))?;
            // SAFETY: `bufs[..count]` are valid IoSlices (layout-compatible with iovec)
            // borrowed for the duration of the call; the fd is owned by `file`.
            let written = unsafe {
                libc::pwritev(
                    file.as_raw_fd(),
                    bufs.as_ptr().cast::<libc::iovec>(),
                    count as libc::c_int,
                    at,
                )
            };
            if written < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                ));
            }
            offset += written as u64;
            IoSlice::advance_slices(&mut bufs, written as usize);
        }
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::other("length overflows off_t"))?;
        // SAFETY: fallocate on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A [`StdFs`] that "crashes" at a chosen mutating operation: operation number
/// `crash_at` (counting from 0 over every call of [`WalFs`]) and every later one fail
/// without touching the disk, except that a failing write first writes the leading
/// `torn_write_bytes` bytes of its buffer (a torn write). What is on disk afterwards is
/// what a process crash at that instant would leave behind, so reopening the directory
/// with [`StdFs`] tests recovery. Meant for tests.
#[derive(Debug)]
pub struct CrashFs {
    ops: AtomicU64,
    crash_at: AtomicU64,
    torn_write_bytes: AtomicUsize,
}

impl CrashFs {
    /// A filesystem that fails from operation `crash_at` on (`u64::MAX`: never).
    pub fn new(crash_at: u64, torn_write_bytes: usize) -> CrashFs {
        CrashFs {
            ops: AtomicU64::new(0),
            crash_at: AtomicU64::new(crash_at),
            torn_write_bytes: AtomicUsize::new(torn_write_bytes),
        }
    }

    /// How many operations were attempted so far (including failed ones).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Moves the crash point: operation number `crash_at` and later ones fail.
    pub fn set_crash_at(&self, crash_at: u64) {
        self.crash_at.store(crash_at, Ordering::SeqCst);
    }

    /// Sets how many leading bytes of the write at the crash point still land.
    pub fn set_torn_write_bytes(&self, bytes: usize) {
        self.torn_write_bytes.store(bytes, Ordering::SeqCst);
    }

    /// Counts an operation; `Err` if the crash point is reached.
    fn step(&self) -> io::Result<()> {
        let op = self.ops.fetch_add(1, Ordering::SeqCst);
        if op >= self.crash_at.load(Ordering::SeqCst) {
            Err(io::Error::other(format!(
                "injected crash at operation {op}"
            )))
        } else {
            Ok(())
        }
    }
}

impl WalFs for CrashFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.step()?;
        StdFs.create_new(path)
    }

    fn open_rw(&self, path: &Path) -> io::Result<File> {
        // Opening changes nothing on disk; it is not a crash point.
        StdFs.open_rw(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let op = self.ops.fetch_add(1, Ordering::SeqCst);
        let crash_at = self.crash_at.load(Ordering::SeqCst);
        if op >= crash_at {
            let torn = self.torn_write_bytes.load(Ordering::SeqCst).min(buf.len());
            if op == crash_at && torn > 0 {
                // Only the write at the crash point is torn; later ones never start.
                StdFs.write_all_at(file, &buf[..torn], offset)?;
            }
            return Err(io::Error::other(format!(
                "injected crash at operation {op}"
            )));
        }
        StdFs.write_all_at(file, buf, offset)
    }

    fn write_vectored_at(&self, file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        // One operation, torn like `write_all_at` at the crash point.
        let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.write_all_at(file, &flat, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.step()?;
        StdFs.sync_data(file)
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        self.step()?;
        StdFs.allocate(file, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        StdFs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        StdFs.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        StdFs.sync_dir(dir)
    }
}
