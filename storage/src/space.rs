//! Running out of disk space: which failures a node survives, and how it measures space.
//!
//! # Which ENOSPC can be survived
//! A full disk is an expected condition, not damage, so where it is safe the node stops
//! taking writes and resumes by itself once space is freed, as etcd does with its
//! `NOSPACE` alarm (etcd raises a cluster-wide alarm when a member's backend hits its
//! quota or the disk fills, refuses every write that would grow the database with
//! `mvcc: database space exceeded`, keeps serving reads, deletes and compaction, and
//! clears the alarm once an operator has freed space). Whether it is safe depends on
//! where ENOSPC surfaced:
//!
//! | where ENOSPC surfaces                           | what is on disk          | outcome |
//! |-------------------------------------------------|--------------------------|---------|
//! | preparing the next WAL segment (`fallocate`, zero fill, its `fdatasync`) | a `.prep` file, removed | [`crate::Error::NoSpace`], retried |
//! | the WAL's `pwritev`, before its `fdatasync`     | bytes past the published end, never synced nor acknowledged | [`crate::Error::NoSpace`], rewritten by the retry |
//! | starting a segment: its header, the header's `fdatasync`, the rename | the prepared file, removed | [`crate::Error::NoSpace`], the retry takes another file |
//! | the directory fsync after that rename           | a named segment, never written to | [`crate::Error::NoSpace`]; the retry renames a new file over it, a truncation deletes it |
//! | `wal.meta`: its temp file, the temp file's `fdatasync`, the rename | the old `wal.meta`; the temp file removed | [`crate::Error::NoSpace`]: the compaction or truncation is refused, the log goes on |
//! | a compaction after that (`wal.meta`'s directory fsync, the segments' removal) | the old or the new first index, both true of the files | [`crate::Error::NoSpace`]: the log goes on, the next compaction retries |
//! | renaming a compacted segment for reuse          | the segment              | deleted instead (frees its space) |
//! | a truncation past its mark (directory fsync, zeroing, clearing the mark) | between two logs | fatal ([`crate::Error::Io`], ENOSPC): recovery completes it on restart |
//! | any `fdatasync` of data the log keeps (records, a truncated segment, the last segment on open) | unknown | fatal: fail-stop, recovery decides on restart |
//! | the stable store (sled)                         | unknown to us            | fatal: [`crate::Error::StableNoSpace`] names the free space; restart once it is freed |
//! | a snapshot: temp file, its fsync, the rename, the directory fsync | a temp file, removed; or the new file in place, synced | [`crate::Error::NoSpace`]: the snapshot fails, the node goes on |
//!
//! The fsync rows follow the "fsyncgate" rule (PostgreSQL 2018, Rebello et al., "Can
//! Applications Recover from fsync Failures?", ATC '20): after a failed `fsync` Linux may
//! already have dropped the dirty pages and marked them clean, so a second `fsync` can
//! report success for data that never reached the disk. A failed sync is therefore never
//! retried as a success. Where a failed fsync still reads as a full disk, it failed on a
//! file that is then thrown away (a temp file, a prepared segment: the retry writes and
//! syncs a new one), or on the directory after a rename that the retry does again or
//! that may stand undone (a compaction's); the next successful fsync then covers a new
//! change and never stands in for the failed one. Anywhere else, ENOSPC from an fsync is
//! as fatal as EIO: the process stops and recovery reads what is really there.
//!
//! Segments are prepared ahead of use (`wal/segment.rs`): their space is reserved with
//! `fallocate` and, for small writes, zero-filled before the log needs them, so appends
//! write into blocks that are already allocated and ENOSPC surfaces while preparing the
//! next segment, before any record of a write lands, rather than in the middle of one.
//! (On a thin-provisioned or copy-on-write filesystem a write into allocated blocks can
//! still fail; that is the second row, still survivable because nothing was synced.)
//!
//! # Measuring space
//! [`free_bytes`] asks `statvfs` for the space an unprivileged user may still use
//! (`f_bavail`), for error messages and `/metrics`. [`allocated_bytes`] adds up the blocks
//! the files under a directory occupy (`st_blocks`, so preallocated and sparse files
//! count as what they really take); a data directory holds a few dozen files (segments,
//! snapshots, sled's files), so the walk is cheap enough to run a few times a second, and
//! the node never runs it per write.

use std::io;
use std::path::Path;

/// Whether an I/O error means the filesystem (or the user's quota on it) is full.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

/// Bytes an unprivileged process may still write on the filesystem holding `path` (or,
/// if `path` does not exist, its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    let c_path = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // fsblkcnt_t and c_ulong are not u64 on every target.
    let (available, fragment) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(available.saturating_mul(fragment))
}

/// "12345 bytes (12.1 KiB)", or "an unknown number of bytes" when statvfs failed.
pub fn describe_free_bytes(free_bytes: Option<u64>) -> String {
    match free_bytes {
        Some(bytes) => format!("{bytes} bytes ({}) free", human_bytes(bytes)),
        None => "an unknown number of bytes".to_string(),
    }
}

/// `bytes` in the largest binary unit that keeps it above 1, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes of disk the files under `dir` occupy (`st_blocks`), recursively. Files that
/// vanish during the walk (a segment deleted by compaction) are skipped.
pub fn allocated_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && at != dir => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                pending.push(entry.path());
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_out_of_space_and_other_errors_are_not() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_out_of_space(&io::Error::other("injected")));
    }

    #[test]
    fn allocated_bytes_counts_written_blocks_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let empty = allocated_bytes(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        std::fs::write(dir.path().join("wal/a"), vec![1u8; 1 << 20]).unwrap();
        let used = allocated_bytes(dir.path()).unwrap();
        assert!(
            used >= empty + (1 << 20),
            "1 MiB written under a subdirectory, usage went from {empty} to {used}"
        );
    }

    #[test]
    fn free_bytes_of_a_missing_path_is_that_of_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(&dir.path().join("not/yet/created")).unwrap();
        assert!(
            free > 0,
            "a temp directory's filesystem reports {free} bytes free"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
