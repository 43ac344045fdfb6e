//! Reading a snapshot's payload back, frame by frame, verifying each before handing out
//! any of its bytes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::format::{check_trailer, frame_crc};
use super::{
    to_io, FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES, FRAME_PAYLOAD_BYTES_MAX, TRAILER_LEN,
    TRAILER_MARK,
};
use crate::error::{Error, Result};

enum ReaderState {
    Frames,
    Done,
    Failed,
}

/// Streams a snapshot's payload, verifying each frame before returning any of its bytes and
/// the trailer at the end. Also implements [`std::io::Read`]; there, corruption surfaces as
/// an `io::Error` of kind `InvalidData` wrapping [`Error::SnapshotCorrupt`].
pub struct SnapshotReader {
    file: BufReader<File>,
    path: PathBuf,
    header_crc: u32,
    frame: Vec<u8>,
    frame_pos: usize,
    frames: u64,
    payload_bytes: u64,
    state: ReaderState,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("payload_bytes", &self.payload_bytes)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    pub(super) fn new(file: File, path: PathBuf, header_crc: u32) -> SnapshotReader {
        SnapshotReader {
            file: BufReader::with_capacity(FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES, file),
            path,
            header_crc,
            frame: Vec::new(),
            frame_pos: 0,
            frames: 0,
            payload_bytes: 0,
            state: ReaderState::Frames,
        }
    }

    /// The next verified frame of payload; `None` after the trailer was verified.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        match self.state {
            ReaderState::Done => return Ok(None),
            ReaderState::Failed => {
                return Err(self.corrupt("reading past an earlier failure".to_string()))
            }
            ReaderState::Frames => {}
        }
        match self.read_frame() {
            Ok(true) => {
                self.frame_pos = self.frame.len();
                Ok(Some(&self.frame))
            }
            Ok(false) => {
                self.state = ReaderState::Done;
                Ok(None)
            }
            Err(e) => {
                self.state = ReaderState::Failed;
                Err(e)
            }
        }
    }

    /// Payload bytes returned so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::SnapshotCorrupt {
            file: self.path.clone(),
            reason,
        }
    }

    /// Reads the next frame into `self.frame` (true) or verifies the trailer (false).
    fn read_frame(&mut self) -> Result<bool> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        let got = read_up_to(&mut self.file, &mut head[..4], &self.path)?;
        if got < 4 {
            return Err(self.corrupt(format!(
                "file ends after frame {} ({} payload bytes) without a trailer",
                self.frames, self.payload_bytes
            )));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len == TRAILER_MARK {
            let mut trailer = [0u8; TRAILER_LEN];
            trailer[..4].copy_from_slice(&head[..4]);
            if read_up_to(&mut self.file, &mut trailer[4..], &self.path)? < TRAILER_LEN - 4 {
                return Err(self.corrupt("file ends inside the trailer".to_string()));
            }
            check_trailer(self.header_crc, &trailer, self.frames, self.payload_bytes)
                .map_err(|r| self.corrupt(r))?;
            let mut extra = [0u8; 1];
            if read_up_to(&mut self.file, &mut extra, &self.path)? != 0 {
                return Err(self.corrupt("bytes after the trailer".to_string()));
            }
            return Ok(false);
        }
        if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(self.corrupt(format!("frame {} has invalid length {len}", self.frames)));
        }
        if read_up_to(&mut self.file, &mut head[4..], &self.path)? < 4 {
            return Err(self.corrupt(format!("file ends inside frame {}", self.frames)));
        }
        let stored = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        self.frame.resize(len as usize, 0);
        if read_up_to(&mut self.file, &mut self.frame, &self.path)? < len as usize {
            return Err(self.corrupt(format!("file ends inside frame {}", self.frames)));
        }
        let actual = frame_crc(self.header_crc, self.frames, &self.frame);
        if actual != stored {
            return Err(self.corrupt(format!(
                "frame {} (payload bytes {}..{}) checksum mismatch: stored {stored:#010x}, computed {actual:#010x}",
                self.frames,
                self.payload_bytes,
                self.payload_bytes + u64::from(len)
            )));
        }
        self.frames += 1;
        self.payload_bytes += u64::from(len);
        self.frame_pos = 0;
        Ok(true)
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_up_to(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match file.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read snapshot", path, e)),
        }
    }
    Ok(have)
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.frame_pos >= self.frame.len() {
            match self.state {
                ReaderState::Done => return Ok(0),
                ReaderState::Failed => {
                    return Err(to_io(
                        self.corrupt("reading past an earlier failure".to_string()),
                    ))
                }
                ReaderState::Frames => {}
            }
            match self.read_frame() {
                Ok(true) => {}
                Ok(false) => {
                    self.state = ReaderState::Done;
                    self.frame.clear();
                    self.frame_pos = 0;
                    return Ok(0);
                }
                Err(e) => {
                    self.state = ReaderState::Failed;
                    return Err(to_io(e));
                }
            }
        }
        let n = (self.frame.len() - self.frame_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.frame[self.frame_pos..self.frame_pos + n]);
        self.frame_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use crate::error::Error;
    use crate::snapshot::format::encode_header;
    use crate::snapshot::test_support::{flip, meta, payload, write};
    use crate::snapshot::{SnapshotStore, FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES, TRAILER_LEN};

    #[test]
    fn flipped_payload_byte_fails_at_its_frame_without_releasing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data = payload(2, 5 * FRAME_PAYLOAD_BYTES as u64);
        let m = write(&store, meta(10, 1), &data);
        let header_len = encode_header(&m).unwrap().0.len() as u64;
        // Payload byte 10 of frame 2.
        let frame_size = (FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES) as u64;
        flip(
            &store.file_path(10, 1),
            header_len + 2 * frame_size + 8 + 10,
        );
        let mut r = store.open_reader(&m).unwrap();
        assert_eq!(
            r.next_chunk().unwrap().unwrap(),
            &data[..FRAME_PAYLOAD_BYTES]
        );
        assert!(r.next_chunk().unwrap().is_some());
        let err = r.next_chunk().unwrap_err();
        assert!(
            matches!(&err, Error::SnapshotCorrupt { reason, .. } if reason.contains("frame 2")),
            "{err}"
        );
        assert_eq!(r.payload_bytes(), 2 * FRAME_PAYLOAD_BYTES as u64);
        assert!(r.next_chunk().is_err(), "must stay failed");
        // Through io::Read, the error wraps the typed one.
        let mut sink = Vec::new();
        let io_err = store
            .open_reader(&m)
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert_eq!(io_err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(sink.len(), 2 * FRAME_PAYLOAD_BYTES);
        assert!(store.verify(&m).is_err());
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 10).unwrap();
        let data = payload(3, 3 * FRAME_PAYLOAD_BYTES as u64 + 17);
        let m = write(&store, meta(20, 2), &data);
        let path = store.file_path(20, 2);
        let good = std::fs::read(&path).unwrap();
        let header_len = encode_header(&m).unwrap().0.len();
        let frame_size = FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES;
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated mid-frame", good[..good.len() - 100].to_vec()),
            (
                "truncated at trailer",
                good[..good.len() - TRAILER_LEN].to_vec(),
            ),
            ("trailing garbage", [good.clone(), vec![0u8; 3]].concat()),
            ("header byte", {
                let mut b = good.clone();
                b[20] ^= 1;
                b
            }),
            ("magic", {
                let mut b = good.clone();
                b[0] = b'X';
                b
            }),
            ("frame length", {
                let mut b = good.clone();
                b[header_len + frame_size] ^= 0x10;
                b
            }),
            ("trailer count", {
                let mut b = good.clone();
                let n = b.len();
                b[n - 18] ^= 1;
                b
            }),
        ];
        // A frame removed entirely (at a frame boundary).
        let mut dropped = good[..header_len + frame_size].to_vec();
        dropped.extend_from_slice(&good[header_len + 2 * frame_size..]);
        cases.push(("frame removed", dropped));
        // Two frames swapped.
        let mut swapped = good[..header_len].to_vec();
        swapped.extend_from_slice(&good[header_len + frame_size..header_len + 2 * frame_size]);
        swapped.extend_from_slice(&good[header_len..header_len + frame_size]);
        swapped.extend_from_slice(&good[header_len + 2 * frame_size..]);
        cases.push(("frames swapped", swapped));
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert!(store.verify(&m).is_err(), "{what}: not detected");
        }
        std::fs::write(&path, &good).unwrap();
        store.verify(&m).unwrap();
    }

    #[test]
    fn body_of_another_snapshot_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data = payload(4, 100_000);
        let a = write(&store, meta(30, 1), &data);
        let b = write(&store, meta(31, 1), &data);
        let header_a = encode_header(&a).unwrap().0;
        let body_b = std::fs::read(store.file_path(31, 1)).unwrap()
            [encode_header(&b).unwrap().0.len()..]
            .to_vec();
        std::fs::write(store.file_path(30, 1), [header_a, body_b].concat()).unwrap();
        assert!(store.verify(&a).is_err());
    }
}
