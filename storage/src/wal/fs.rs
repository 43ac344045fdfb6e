//! The thin filesystem layer under the WAL.
//!
//! Every call that changes durable state (create, write, fdatasync, rename, unlink,
//! directory fsync) goes through [`WalFs`], so tests can stop the WAL at any step and
//! check that what is left on disk recovers to the old or the new state. Reads go
//! through memory maps of the files and are not faultable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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
        // Through the handle the open `Wal` holds, so that it needs no new descriptor.
        crate::dir::sync_path(dir)
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

/// Bytes of the unit a [`PowerCutFs`] loses or keeps at a power cut by default: the page
/// cache writes back whole pages, in no particular order.
pub const POWER_CUT_PAGE_BYTES: u64 = 4096;

/// A file's state since its last fdatasync, as a [`PowerCutFs`] tracks it.
#[derive(Debug)]
struct Unsynced {
    /// A handle to write the old contents back through (the file may have been renamed).
    file: File,
    /// Its size as of the last fdatasync (or when first seen).
    synced_len: u64,
    /// Each page written since the last fdatasync, with what it held before (zeros past
    /// `synced_len`).
    pages: BTreeMap<u64, Vec<u8>>,
}

/// A [`CrashFs`] that also knows which pages were written since each file's last
/// fdatasync, and at [`PowerCutFs::power_cut`] keeps an arbitrary subset of them and
/// reverts the rest to their synced contents: what a power loss can leave behind when
/// a multi-page `pwritev` reaches the disk out of order (the model LazyFS implements
/// for etcd's robustness tests). A process crash keeps every written page (the page
/// cache survives it); a power cut keeps only what was synced, plus chance.
///
/// Creates, renames and unlinks are taken as durable at once (the WAL fsyncs the
/// directory after each of them before it relies on them; losing them is not
/// simulated). Call `power_cut` only while no [`crate::wal::Wal`] has the files open:
/// it rewrites them underneath any memory map. Meant for tests.
#[derive(Debug)]
pub struct PowerCutFs {
    crash: CrashFs,
    /// The unit kept or lost at a power cut.
    page_bytes: u64,
    /// Keyed by (device, inode): writes and syncs name a file only by its handle.
    unsynced: Mutex<BTreeMap<(u64, u64), Unsynced>>,
}

impl Default for PowerCutFs {
    fn default() -> Self {
        PowerCutFs::new()
    }
}

fn file_key(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Reads up to `buf.len()` bytes at `offset`, leaving what lies past the end zero.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl PowerCutFs {
    /// A filesystem that never crashes until told to, with nothing unsynced, that keeps
    /// or loses [`POWER_CUT_PAGE_BYTES`] pages.
    pub fn new() -> PowerCutFs {
        PowerCutFs::with_page_bytes(POWER_CUT_PAGE_BYTES)
    }

    /// Like [`PowerCutFs::new`], keeping or losing units of `page_bytes` (at least 1):
    /// units smaller than a page (a disk's sectors can be written out of order too) let
    /// tests with small files see out-of-order writes inside one write.
    pub fn with_page_bytes(page_bytes: u64) -> PowerCutFs {
        PowerCutFs {
            crash: CrashFs::new(u64::MAX, 0),
            page_bytes: page_bytes.max(1),
            unsynced: Mutex::new(BTreeMap::new()),
        }
    }

    /// How many operations were attempted so far (as [`CrashFs::ops`]).
    pub fn ops(&self) -> u64 {
        self.crash.ops()
    }

    /// Operation number `crash_at` and later ones fail (as [`CrashFs::set_crash_at`]).
    pub fn set_crash_at(&self, crash_at: u64) {
        self.crash.set_crash_at(crash_at);
    }

    /// Leading bytes of the write at the crash point that still land.
    pub fn set_torn_write_bytes(&self, bytes: usize) {
        self.crash.set_torn_write_bytes(bytes);
    }

    /// Pages written and not yet synced, over all files.
    pub fn unsynced_pages(&self) -> usize {
        self.lock().values().map(|u| u.pages.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), Unsynced>> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `file` if it is not tracked yet, and saves the synced contents
    /// of the pages `[offset, offset + len)` touches that are not saved yet.
    fn remember(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let meta = file.metadata()?;
        let mut unsynced = self.lock();
        let entry = match unsynced.entry(file_key(&meta)) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Unsynced {
                file: file.try_clone()?,
                synced_len: meta.len(),
                pages: BTreeMap::new(),
            }),
        };
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (
            offset / self.page_bytes,
            (offset + len - 1) / self.page_bytes,
        );
        for page in first..=last {
            if let std::collections::btree_map::Entry::Vacant(v) = entry.pages.entry(page) {
                let mut old = vec![0u8; self.page_bytes as usize];
                let at = page * self.page_bytes;
                if at < entry.synced_len {
                    let synced = ((entry.synced_len - at) as usize).min(old.len());
                    read_up_to(file, &mut old[..synced], at)?;
                }
                v.insert(old);
            }
        }
        Ok(())
    }

    /// Forgets the file `meta` describes once it is unlinked: its inode may be reused
    /// by a new file.
    fn forget(&self, meta: io::Result<std::fs::Metadata>) {
        if let Ok(meta) = meta {
            self.lock().remove(&file_key(&meta));
        }
    }

    /// Cuts the power: of every page written since its file's last fdatasync, keeps a
    /// subset chosen by `seed` (none, all, or each page by a coin flip, so out-of-order
    /// subsets are common) and reverts the others. Returns how many pages were kept and
    /// how many reverted.
    pub fn power_cut(&self, seed: u64) -> io::Result<(usize, usize)> {
        let mut state = seed;
        let mut next = move || {
            // splitmix64: a dependency-free generator is enough for a coin flip.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mode = next() % 4;
        self.power_cut_keeping(|_| match mode {
            0 => false,
            1 => true,
            _ => next() & 1 == 1,
        })
    }

    /// Cuts the power, keeping exactly the unsynced pages for which `keep(page number)`
    /// is true (asked file by file, pages in ascending order). A file's size reverts to
    /// its synced size, extended only as far as its kept pages reach.
    pub fn power_cut_keeping(
        &self,
        mut keep: impl FnMut(u64) -> bool,
    ) -> io::Result<(usize, usize)> {
        let mut unsynced = self.lock();
        let (mut kept, mut reverted) = (0, 0);
        for (_, u) in std::mem::take(&mut *unsynced) {
            let len = u.file.metadata()?.len();
            let mut new_len = u.synced_len;
            for (page, old) in &u.pages {
                let at = page * self.page_bytes;
                if keep(*page) {
                    new_len = new_len.max((at + self.page_bytes).min(len));
                    kept += 1;
                } else {
                    u.file.write_all_at(old, at)?;
                    reverted += 1;
                }
            }
            // Reverted pages past the new end were written back whole; cut them off.
            u.file.set_len(new_len)?;
        }
        Ok((kept, reverted))
    }
}

impl WalFs for PowerCutFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.crash.create_new(path)
    }

    fn open_rw(&self, path: &Path) -> io::Result<File> {
        self.crash.open_rw(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        self.remember(file, offset, buf.len() as u64)?;
        self.crash.write_all_at(file, buf, offset)
    }

    fn write_vectored_at(&self, file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.remember(file, offset, len as u64)?;
        self.crash.write_vectored_at(file, bufs, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        // Only marks the pages synced: the simulated power cut is the only one a test
        // has, so a real fdatasync would test nothing, and on a busy disk it made the
        // model test I/O-bound (170 s of wall time for 6 s of CPU).
        self.crash.step()?;
        let key = file_key(&file.metadata()?);
        self.lock().remove(&key);
        Ok(())
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        // The size it sets is lost at a power cut unless synced (see `power_cut_keeping`).
        self.remember(file, 0, 0)?;
        self.crash.allocate(file, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let replaced = std::fs::metadata(to);
        self.crash.rename(from, to)?;
        self.forget(replaced);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let removed = std::fs::metadata(path);
        self.crash.remove_file(path)?;
        self.forget(removed);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        // Directory changes are durable at once here (see the type's documentation).
        self.crash.step()
    }
}
