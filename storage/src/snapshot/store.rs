//! The directory of snapshot files: naming, listing, retention, quarantine, and serving
//! a snapshot's raw bytes to a follower.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;

use super::format::{open_checked, read_header};
use super::writer::TempTarget;
use super::{
    SnapshotReader, SnapshotReceiver, SnapshotWriter, DEFAULT_KEEP, FILE_PREFIX, FILE_SUFFIX,
    TEMP_SUFFIX,
};
use crate::dir::DirHandle;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::SnapshotMeta;

/// The directory of snapshot files. Cheap to clone; clones share the temp-name counter.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    pub(super) dir: PathBuf,
    keep: usize,
    pub(super) temp_seq: Arc<AtomicU64>,
    /// Held open so that fsyncing and listing the directory need no new descriptor.
    dir_handle: Arc<DirHandle>,
}

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`, keeping the newest
    /// [`DEFAULT_KEEP`] snapshots. Removes temp files left by a crash and snapshots beyond
    /// the newest `keep`.
    pub fn open(dir: impl AsRef<Path>) -> Result<SnapshotStore> {
        SnapshotStore::open_with_retention(dir, DEFAULT_KEEP)
    }

    /// Like [`SnapshotStore::open`], keeping the newest `keep` snapshots.
    ///
    /// # Panics
    /// If `keep` is 0: the newest snapshot must always be kept.
    pub fn open_with_retention(dir: impl AsRef<Path>, keep: usize) -> Result<SnapshotStore> {
        assert!(
            keep >= 1,
            "snapshot retention must keep at least 1, got {keep}"
        );
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io_or_no_space("create snapshot directory", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let dir_handle =
            DirHandle::open(&dir).map_err(|e| Error::io("open snapshot directory", &dir, e))?;
        let store = SnapshotStore {
            dir,
            keep,
            temp_seq: Arc::new(AtomicU64::new(0)),
            dir_handle: Arc::new(dir_handle),
        };
        let mut removed = false;
        for name in store.dir_names()? {
            if name.ends_with(TEMP_SUFFIX) {
                let path = store.dir.join(&name);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io("remove stale snapshot temp file", &path, e))?;
                tracing::info!(file = %path.display(), "removed unfinished snapshot temp file");
                removed = true;
            }
        }
        removed |= store.prune(None)?;
        if removed {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new snapshot described by `meta`; write its payload to the returned writer.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        let target = TempTarget::create(self, &meta)?;
        Ok(SnapshotWriter::new(target, meta))
    }

    /// Starts receiving a snapshot from a leader: feed it the bytes of
    /// [`SnapshotStore::read_chunk`] in order (see the module docs on transfer).
    pub fn begin_receive(&self, meta: SnapshotMeta) -> Result<SnapshotReceiver> {
        let target = TempTarget::create(self, &meta)?;
        Ok(SnapshotReceiver::new(target, meta))
    }

    /// Snapshots whose header is readable, newest (highest last index, then term) first.
    /// Files whose header is damaged are logged and left out; their frames are checked by
    /// [`SnapshotStore::verify`], not here.
    pub fn list(&self) -> Result<Vec<SnapshotMeta>> {
        let mut out = Vec::new();
        for (index, term) in self.snapshot_ids()? {
            let path = self.file_path(index, term);
            match read_header(&path) {
                Ok((meta, _, _)) if meta.last_index == index && meta.last_term == term => {
                    out.push(meta)
                }
                Ok((meta, _, _)) => tracing::warn!(
                    file = %path.display(),
                    "snapshot header describes index {} term {}, not what its name says; skipped",
                    meta.last_index,
                    meta.last_term
                ),
                Err(e) => tracing::warn!(error = %e, "unreadable snapshot header; skipped"),
            }
        }
        Ok(out)
    }

    /// The newest snapshot with a readable header (not fully verified), if any.
    pub fn latest(&self) -> Result<Option<SnapshotMeta>> {
        Ok(self.list()?.into_iter().next())
    }

    /// The newest snapshot that passes [`SnapshotStore::verify`], falling back to older ones
    /// (each failure is logged). `Ok(None)` only if there are no snapshot files at all; if
    /// there are some but none verifies, the newest one's error is returned, so a node never
    /// silently starts without the snapshot its log was compacted into.
    pub fn latest_verified(&self) -> Result<Option<SnapshotMeta>> {
        let mut first_error = None;
        for (index, term) in self.snapshot_ids()? {
            let path = self.file_path(index, term);
            let attempt = read_header(&path).and_then(|(meta, _, _)| {
                self.verify(&meta)?;
                Ok(meta)
            });
            match attempt {
                Ok(meta) => return Ok(Some(meta)),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot failed verification; trying an older one");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Reads the whole snapshot, checking every frame and the trailer.
    pub fn verify(&self, meta: &SnapshotMeta) -> Result<()> {
        let mut reader = self.open_reader(meta)?;
        while reader.next_chunk()?.is_some() {}
        Ok(())
    }

    /// Opens the snapshot described by `meta` (its header must describe the same meta) for
    /// streaming its payload.
    pub fn open_reader(&self, meta: &SnapshotMeta) -> Result<SnapshotReader> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (file, header_crc, _) = open_checked(&path, meta)?;
        Ok(SnapshotReader::new(file, path, header_crc))
    }

    /// Up to `max_len` raw bytes of the data region (frames and trailer, after the header)
    /// of the snapshot `meta`, from `offset`, and whether they reach its end. For
    /// InstallSnapshot: the receiver feeds them to [`SnapshotReceiver::write_chunk`].
    /// Fails with [`Error::Io`] (not found) if the snapshot was deleted since (a newer one
    /// replaced it): the sender restarts with the newer one. Checksums are not verified
    /// here (the receiver does); call [`SnapshotStore::verify`] before offering a snapshot.
    pub fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool)> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (mut file, _, data_start) = open_checked(&path, meta)?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat snapshot", &path, e))?
            .len();
        let data_len = file_len.saturating_sub(data_start);
        if offset > data_len {
            return Err(Error::SnapshotCorrupt {
                file: path,
                reason: format!("chunk offset {offset} is past the data end {data_len}"),
            });
        }
        let n = max_len.min(data_len - offset);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(data_start + offset))
            .map_err(|e| Error::io("seek snapshot", &path, e))?;
        file.read_exact(&mut buf)
            .map_err(|e| Error::io("read snapshot chunk", &path, e))?;
        Ok((Bytes::from(buf), offset + n == data_len))
    }

    /// Size in bytes of the data region [`SnapshotStore::read_chunk`] serves.
    pub fn data_len(&self, meta: &SnapshotMeta) -> Result<u64> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (file, _, data_start) = open_checked(&path, meta)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat snapshot", &path, e))?
            .len();
        Ok(len.saturating_sub(data_start))
    }

    /// Path of the file holding the snapshot at `(last_index, last_term)`.
    pub fn file_path(&self, last_index: u64, last_term: u64) -> PathBuf {
        self.dir.join(format!(
            "{FILE_PREFIX}{last_index:020}-{last_term:020}{FILE_SUFFIX}"
        ))
    }

    fn dir_names(&self) -> Result<Vec<String>> {
        let entries = self
            .dir_handle
            .entries()
            .map_err(|e| Error::io("list snapshot directory", &self.dir, e))?;
        Ok(entries
            .into_iter()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect())
    }

    pub(super) fn sync_dir(&self) -> Result<()> {
        failpoint::inject("snapshot::dir_fsync")
            .and_then(|()| self.dir_handle.sync())
            .map_err(|e| Error::io_or_no_space("fsync directory", &self.dir, e))
    }

    /// `(last_index, last_term)` of every snapshot file, newest first.
    fn snapshot_ids(&self) -> Result<Vec<(u64, u64)>> {
        let mut ids: Vec<(u64, u64)> = self
            .dir_names()?
            .iter()
            .filter_map(|name| parse_file_name(name))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Renames every snapshot newer than `kept` to `<name>.corrupt`, so that retention
    /// (which keeps the newest `keep` snapshots) never deletes `kept` in favor of files that
    /// failed verification, while the damaged files stay for an operator to inspect. Call it
    /// once a node has chosen `kept` after the newer ones failed [`SnapshotStore::verify`].
    /// Returns the new paths.
    pub fn quarantine_newer_than(&self, kept: &SnapshotMeta) -> Result<Vec<PathBuf>> {
        let mut moved = Vec::new();
        for (index, term) in self.snapshot_ids()? {
            if (index, term) <= (kept.last_index, kept.last_term) {
                continue;
            }
            let path = self.file_path(index, term);
            let mut target = path.clone().into_os_string();
            target.push(".corrupt");
            let target = PathBuf::from(target);
            std::fs::rename(&path, &target)
                .map_err(|e| Error::io_or_no_space("quarantine a corrupt snapshot", &path, e))?;
            tracing::warn!(
                file = %target.display(),
                "snapshot failed verification; renamed so it is never used or counted"
            );
            moved.push(target);
        }
        if !moved.is_empty() {
            self.sync_dir()?;
        }
        Ok(moved)
    }

    /// Deletes snapshots beyond the newest `keep`, never `spare`. Returns whether any went.
    pub(super) fn prune(&self, spare: Option<(u64, u64)>) -> Result<bool> {
        let mut removed = false;
        for id in self.snapshot_ids()?.into_iter().skip(self.keep) {
            if Some(id) == spare {
                continue;
            }
            let path = self.file_path(id.0, id.1);
            std::fs::remove_file(&path).map_err(|e| Error::io("remove old snapshot", &path, e))?;
            tracing::debug!(file = %path.display(), "removed old snapshot");
            removed = true;
        }
        Ok(removed)
    }
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io_or_no_space("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::snapshot::test_support::{flip, meta, payload, read_all, transfer, write};

    #[test]
    fn latest_verified_falls_back_to_the_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let old = write(&store, meta(40, 1), &payload(5, 200_000));
        let new = write(&store, meta(50, 2), &payload(6, 200_000));
        assert_eq!(store.latest_verified().unwrap(), Some(new.clone()));
        flip(&store.file_path(50, 2), 150_000);
        assert_eq!(store.latest().unwrap(), Some(new.clone()));
        assert_eq!(store.latest_verified().unwrap(), Some(old.clone()));
        flip(&store.file_path(40, 1), 3); // magic: header unreadable
        let err = store.latest_verified().unwrap_err();
        assert!(
            err.to_string().contains("snap-00000000000000000050"),
            "{err}"
        );
        assert_eq!(store.list().unwrap(), vec![new]);
    }

    #[test]
    fn quarantined_snapshots_no_longer_count_toward_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let good = write(&store, meta(40, 1), &payload(5, 100_000));
        write(&store, meta(50, 2), &payload(6, 100_000));
        flip(&store.file_path(50, 2), 50_000);
        assert_eq!(store.latest_verified().unwrap(), Some(good.clone()));
        let moved = store.quarantine_newer_than(&good).unwrap();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].to_string_lossy().ends_with(".snap.corrupt"));
        assert_eq!(store.list().unwrap(), vec![good.clone()]);
        // The next snapshot must not push the good one out in favor of the damaged one.
        let next = write(&store, meta(60, 2), &payload(7, 100_000));
        assert_eq!(store.list().unwrap(), vec![next, good]);
        assert!(moved[0].exists(), "the damaged file is kept for inspection");
        // Reopening leaves the quarantined file alone.
        let reopened = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 2);
        assert!(moved[0].exists());
    }

    #[test]
    fn empty_directory_has_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.latest().unwrap(), None);
        assert_eq!(store.latest_verified().unwrap(), None);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn crash_before_rename_leaves_previous_snapshot_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let store = SnapshotStore::open(&path).unwrap();
        let data = payload(7, 300_000);
        let prev = write(&store, meta(60, 3), &data);
        let mut w = store.begin(meta(70, 3)).unwrap();
        w.write_chunk(&payload(8, 500_000)).unwrap();
        // A crash: neither finish nor abort nor Drop runs.
        std::mem::forget(w);
        let temps = |p: &Path| {
            std::fs::read_dir(p)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(TEMP_SUFFIX)
                })
                .count()
        };
        assert_eq!(temps(&path), 1);
        assert_eq!(store.latest().unwrap(), Some(prev.clone()));
        drop(store);
        let store = SnapshotStore::open(&path).unwrap();
        assert_eq!(temps(&path), 0, "stale temp file not removed on open");
        assert_eq!(store.latest_verified().unwrap(), Some(prev.clone()));
        assert_eq!(read_all(&store, &prev).unwrap(), data);
    }

    #[test]
    fn retention_keeps_the_newest_n() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        for i in 1..=5u64 {
            write(&store, meta(i * 10, 1), &payload(i, 1000));
        }
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50, 40]);
        // Reopening with a smaller retention prunes on open.
        let store = SnapshotStore::open_with_retention(dir.path(), 1).unwrap();
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50]);
        // An older snapshot received later is kept (it was just finished) ...
        write(&store, meta(45, 1), &payload(9, 1000));
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50, 45]);
        // ... and pruned by the next one.
        write(&store, meta(60, 2), &payload(9, 1000));
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![60]);
    }

    #[test]
    fn list_orders_by_index_then_term() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 10).unwrap();
        for (i, t) in [(9, 1), (100, 2), (100, 3), (11, 1)] {
            write(&store, meta(i, t), b"x");
        }
        let ids: Vec<(u64, u64)> = store
            .list()
            .unwrap()
            .iter()
            .map(|m| (m.last_index, m.last_term))
            .collect();
        assert_eq!(ids, vec![(100, 3), (100, 2), (11, 1), (9, 1)]);
    }

    #[test]
    fn read_chunk_of_a_replaced_snapshot_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 1).unwrap();
        let old = write(&store, meta(1, 1), b"old");
        write(&store, meta(2, 1), b"new");
        let err = store.read_chunk(&old, 0, 10).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        // Asking with a meta that does not match the header is refused.
        let mut wrong = meta(2, 1);
        wrong.membership.members.clear();
        assert!(store.read_chunk(&wrong, 0, 10).is_err());
    }

    /// Throughput of writing (incl. fsync + rename), verifying and transferring a 64 MiB
    /// snapshot. Run with
    /// `cargo test -p storage --release --lib snapshot::store::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_snapshot_throughput() {
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("a")).unwrap();
        let other = SnapshotStore::open(dir.path().join("b")).unwrap();
        let total = 64 * 1024 * 1024u64;
        let chunk = payload(1, 1024 * 1024);
        let mib = total as f64 / (1024.0 * 1024.0);
        let start = Instant::now();
        let mut w = store.begin(meta(1, 1)).unwrap();
        for _ in 0..total / chunk.len() as u64 {
            w.write_chunk(&chunk).unwrap();
        }
        let m = w.finish().unwrap();
        let write = start.elapsed();
        let start = Instant::now();
        store.verify(&m).unwrap();
        let verify = start.elapsed();
        let start = Instant::now();
        transfer(&store, &other, &m, 1024 * 1024).unwrap();
        let xfer = start.elapsed();
        println!(
            "64 MiB snapshot: write+fsync+rename {:.0} MiB/s, verify {:.0} MiB/s, \
             transfer (1 MiB read_chunk -> receiver) {:.0} MiB/s",
            mib / write.as_secs_f64(),
            mib / verify.as_secs_f64(),
            mib / xfer.as_secs_f64()
        );
    }

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(
            parse_file_name("snap-00000000000000000042-00000000000000000007.snap"),
            Some((42, 7))
        );
        assert_eq!(parse_file_name("snap-42-7.snap"), None);
        assert_eq!(
            parse_file_name("snap-00000000000000000042-00000000000000000007.1.2.tmp"),
            None
        );
    }
}
