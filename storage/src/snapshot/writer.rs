//! Writing a new snapshot: the temp file it goes to, framing the payload, and installing
//! the file (fsync, rename, directory fsync) once it is complete.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::format::{encode_header, encode_trailer, frame_crc};
use super::store::SnapshotStore;
use super::{to_io, FILE_PREFIX, FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES, TEMP_SUFFIX};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::SnapshotMeta;

/// A temp file being written, renamed into place by `finish`, removed if dropped before.
pub(super) struct TempTarget {
    file: File,
    pub(super) temp_path: PathBuf,
    final_path: PathBuf,
    store: SnapshotStore,
    pub(super) header_crc: u32,
    done: bool,
}

impl TempTarget {
    pub(super) fn create(store: &SnapshotStore, meta: &SnapshotMeta) -> Result<TempTarget> {
        let (header, header_crc) = encode_header(meta)?;
        let seq = store.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp_path = store.dir.join(format!(
            "{FILE_PREFIX}{:020}-{:020}.{}.{seq}{TEMP_SUFFIX}",
            meta.last_index,
            meta.last_term,
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| Error::io_or_no_space("create snapshot temp file", &temp_path, e))?;
        let mut target = TempTarget {
            file,
            temp_path,
            final_path: store.file_path(meta.last_index, meta.last_term),
            store: store.clone(),
            header_crc,
            done: false,
        };
        // If this fails, dropping `target` removes the temp file.
        target.write_all(&header)?;
        Ok(target)
    }

    pub(super) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        failpoint::inject("snapshot::write")
            .map_err(|e| Error::io_or_no_space("write snapshot", &self.temp_path, e))?;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io_or_no_space("write snapshot", &self.temp_path, e))?;
        crate::pacing::after_write(&self.file, bytes.len());
        Ok(())
    }

    /// fsync, rename into place, fsync the directory, prune old snapshots.
    ///
    /// A full disk is [`Error::NoSpace`] at every step, the fsyncs included: a snapshot
    /// that fails is never retried, the next one is a new temp file (`crate::space`). If
    /// the directory fsync fails, the new file stays in place, synced, but it may not be
    /// durable; the caller does not count on it (a node compacts its log only after
    /// `finish` returned), and a restart finds it or the one before.
    pub(super) fn install(mut self, id: (u64, u64)) -> Result<()> {
        failpoint::inject("snapshot::fsync")
            .map_err(|e| Error::io_or_no_space("fsync snapshot temp file", &self.temp_path, e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io_or_no_space("fsync snapshot temp file", &self.temp_path, e))?;
        failpoint::inject("snapshot::rename").map_err(|e| {
            Error::io_or_no_space("rename snapshot into place", &self.final_path, e)
        })?;
        std::fs::rename(&self.temp_path, &self.final_path).map_err(|e| {
            Error::io_or_no_space("rename snapshot into place", &self.final_path, e)
        })?;
        self.done = true;
        self.store.sync_dir()?;
        // The new snapshot is durable; older ones may go. A failure to delete one is not a
        // failure of this snapshot: log it, the next open retries.
        if let Err(e) = self.store.prune(Some(id)) {
            tracing::warn!(error = %e, "could not remove old snapshots");
        }
        Ok(())
    }

    pub(super) fn remove(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        match std::fs::remove_file(&self.temp_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove snapshot temp file", &self.temp_path, e)),
        }
    }
}

impl Drop for TempTarget {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "could not remove abandoned snapshot temp file");
        }
    }
}

/// Writes a new snapshot's payload, framing it. Dropping it without [`SnapshotWriter::finish`]
/// discards the snapshot.
pub struct SnapshotWriter {
    /// `| len | crc |` placeholder followed by up to `FRAME_PAYLOAD_BYTES` of payload.
    frame: Vec<u8>,
    frames: u64,
    payload_bytes: u64,
    target: TempTarget,
    meta: SnapshotMeta,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("temp_path", &self.target.temp_path)
            .field("payload_bytes", &self.payload_bytes)
            .finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    pub(super) fn new(target: TempTarget, meta: SnapshotMeta) -> SnapshotWriter {
        SnapshotWriter {
            frame: Vec::with_capacity(FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES),
            frames: 0,
            payload_bytes: 0,
            target,
            meta,
        }
    }

    /// Appends payload bytes (any size; framed internally).
    pub fn write_chunk(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.frame.is_empty() {
                self.frame.resize(FRAME_HEADER_LEN, 0);
            }
            let room = FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES - self.frame.len();
            let n = room.min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.payload_bytes += n as u64;
            if self.frame.len() == FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.frame.len() <= FRAME_HEADER_LEN {
            return Ok(());
        }
        let payload_len = self.frame.len() - FRAME_HEADER_LEN;
        let crc = frame_crc(
            self.target.header_crc,
            self.frames,
            &self.frame[FRAME_HEADER_LEN..],
        );
        self.frame[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let frame = std::mem::take(&mut self.frame);
        let result = self.target.write_all(&frame);
        self.frame = frame;
        self.frame.clear();
        result?;
        self.frames += 1;
        Ok(())
    }

    /// Writes the trailer, fsyncs, renames into place, fsyncs the directory, then deletes
    /// snapshots beyond the retention count. Returns once the snapshot is durable.
    pub fn finish(mut self) -> Result<SnapshotMeta> {
        self.flush_frame()?;
        let trailer = encode_trailer(self.target.header_crc, self.frames, self.payload_bytes);
        self.target.write_all(&trailer)?;
        let SnapshotWriter { target, meta, .. } = self;
        target.install((meta.last_index, meta.last_term))?;
        Ok(meta)
    }

    /// Discards the snapshot (removes the temp file). Dropping the writer does the same but
    /// can only log a failure.
    pub fn abort(mut self) -> Result<()> {
        self.target.remove()
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_chunk(buf).map_err(to_io)?;
        Ok(buf.len())
    }

    /// Does nothing: durability comes from [`SnapshotWriter::finish`] only.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::snapshot::test_support::{meta, payload, read_all, write};
    use crate::snapshot::TRAILER_LEN;

    #[test]
    fn round_trip_multi_frame_via_chunks_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("snap")).unwrap();
        let data = payload(1, 3 * 1024 * 1024 + 12345);
        let m = write(&store, meta(100, 3), &data);
        assert_eq!(m, meta(100, 3));
        assert_eq!(read_all(&store, &m).unwrap(), data);
        let mut via_read = Vec::new();
        store
            .open_reader(&m)
            .unwrap()
            .read_to_end(&mut via_read)
            .unwrap();
        assert_eq!(via_read, data);
        store.verify(&m).unwrap();
        assert_eq!(store.latest().unwrap(), Some(meta(100, 3)));
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let m = write(&store, meta(5, 1), &[]);
        assert_eq!(read_all(&store, &m).unwrap(), Vec::<u8>::new());
        let (bytes, done) = store.read_chunk(&m, 0, 1 << 20).unwrap();
        assert!(done);
        assert_eq!(bytes.len(), TRAILER_LEN);
    }

    #[test]
    fn abort_and_drop_remove_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut w = store.begin(meta(1, 1)).unwrap();
        w.write_all(&[1, 2, 3]).unwrap();
        w.abort().unwrap();
        let mut w = store.begin(meta(2, 1)).unwrap();
        w.write_all(&[1, 2, 3]).unwrap();
        drop(w);
        let mut r = store.begin_receive(meta(3, 1)).unwrap();
        r.write_chunk(0, &[5, 0, 0, 0]).unwrap();
        drop(r);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(store.latest().unwrap(), None);
    }
}
