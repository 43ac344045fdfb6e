//! Paced writeback for large sequential writes that share the disk with the WAL (issue 14).
//!
//! A snapshot used to be written into the page cache in full and made durable by one
//! `fsync` at the end. That left up to the whole state dirty in memory, then asked the disk
//! for all of it at once: the WAL's `fdatasync` (every acknowledged write waits on one)
//! queued behind it, and on ext4 with `data=ordered` a journal commit the WAL needs can
//! itself wait for the snapshot's newly allocated blocks. The write path paid for each
//! snapshot in its tail latency.
//!
//! So, as RocksDB's `bytes_per_sync` does, the writer starts writeback of every
//! [`WRITEBACK_CHUNK_BYTES`] as soon as it is complete (`sync_file_range(WRITE)`,
//! asynchronous), and waits for the chunk before that to reach the disk. At most two chunks
//! are dirty or in flight at any time, the disk sees a steady trickle of snapshot writes the
//! WAL's syncs interleave with, the writer is slowed to the disk's pace, and the final
//! `fsync` has almost nothing left to write.
//!
//! This is only pacing, never durability: `sync_file_range` does not flush the disk's
//! cache or the file's metadata, so the final `fsync` stays, and an error here is left for
//! it to report (a failed writeback sets the file's error state, which `fsync` returns).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Writeback is started per chunk of this size. Small enough that one chunk's writeback is
/// short next to a WAL sync's budget (1 MiB at the 50–100 MiB/s measured here is 10–20 ms
/// at worst, usually far less), large enough that the extra system calls cost nothing
/// measurable (two per MiB).
pub const WRITEBACK_CHUNK_BYTES: u64 = 1 << 20;

/// What to do after a write that ended at file offset `end` and was `written` bytes long:
/// the range whose writeback to start, and the range to wait for. `None` when the write did
/// not complete a chunk. Writes must be sequential (each starts where the last ended).
pub fn writeback_ranges(end: u64, written: u64) -> Option<(Range<u64>, Range<u64>)> {
    let start = end.saturating_sub(written);
    let chunk = WRITEBACK_CHUNK_BYTES;
    let complete_end = end / chunk * chunk;
    let first_open = start / chunk * chunk;
    if complete_end <= first_open {
        return None;
    }
    // Chunks [first_open, complete_end) were completed by this write; everything before
    // first_open had its writeback started by earlier calls. Waiting for one chunk behind
    // the ones just started keeps two chunks at most in flight.
    let wait_from = first_open.saturating_sub(chunk);
    Some((first_open..complete_end, wait_from..first_open))
}

/// Call after each write of `written` bytes to `file`, which is written sequentially from
/// its start: starts writeback of the chunks the write completed and waits for the one
/// before them. Errors are ignored (see the module docs: the final `fsync` reports them).
pub fn after_write(file: &File, written: usize) {
    use std::io::Seek;
    let Ok(end) = (&*file).stream_position() else {
        return;
    };
    let Some((start_writeback, wait_for)) = writeback_ranges(end, written as u64) else {
        return;
    };
    let fd = file.as_raw_fd();
    let sync_range = |range: &Range<u64>, flags: libc::c_uint| {
        if range.is_empty() {
            return;
        }
        // SAFETY: sync_file_range only reads its integer arguments; `fd` is open for the
        // lifetime of `file`.
        unsafe {
            libc::sync_file_range(
                fd,
                range.start as libc::off64_t,
                (range.end - range.start) as libc::off64_t,
                flags,
            );
        }
    };
    sync_range(&start_writeback, libc::SYNC_FILE_RANGE_WRITE);
    sync_range(
        &wait_for,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    const MIB: u64 = WRITEBACK_CHUNK_BYTES;

    #[test]
    fn writes_within_a_chunk_start_no_writeback() {
        assert_eq!(writeback_ranges(100, 100), None);
        assert_eq!(writeback_ranges(MIB - 1, 10), None);
        assert_eq!(writeback_ranges(MIB + 5, 5), None, "starts at a boundary");
    }

    #[test]
    fn completing_a_chunk_starts_it_and_waits_for_the_one_before() {
        assert_eq!(writeback_ranges(MIB, 10), Some((0..MIB, 0..0)));
        assert_eq!(
            writeback_ranges(2 * MIB + 3, 10),
            Some((MIB..2 * MIB, 0..MIB))
        );
    }

    #[test]
    fn a_write_spanning_chunks_starts_every_chunk_it_completed() {
        assert_eq!(
            writeback_ranges(5 * MIB + 7, 3 * MIB),
            Some((2 * MIB..5 * MIB, MIB..2 * MIB))
        );
    }

    /// Every byte is started exactly once over a sequence of writes of varied sizes, and
    /// each wait covers only bytes already started.
    #[test]
    fn sequential_writes_start_every_complete_chunk_once() {
        let sizes = [
            1,
            8_000,
            65_536,
            3 * MIB as usize,
            7,
            900_000,
            1 << 20,
            12_345,
        ];
        let (mut end, mut started_to) = (0u64, 0u64);
        for size in sizes.iter().cycle().take(40) {
            end += *size as u64;
            if let Some((start, wait)) = writeback_ranges(end, *size as u64) {
                assert_eq!(start.start, started_to, "gap or overlap before {start:?}");
                assert_eq!(wait.end, start.start, "waits for the chunk just before");
                assert!(wait.start <= wait.end);
                started_to = start.end;
            }
        }
        assert_eq!(started_to, end / MIB * MIB);
    }

    #[test]
    fn after_write_leaves_the_file_and_its_position_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced");
        let mut file = File::create(&path).unwrap();
        let block: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for _ in 0..30 {
            file.write_all(&block).unwrap();
            after_write(&file, block.len());
            expected.extend_from_slice(&block);
        }
        file.sync_all().unwrap();
        let mut read = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut read).unwrap();
        assert!(read == expected, "paced writes changed the file's contents");
    }
}
