//! Receiving a snapshot's raw data region from a leader (InstallSnapshot), checking each
//! frame and the trailer as the bytes stream in.

use super::format::check_trailer;
use super::writer::TempTarget;
use super::{FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES_MAX, TRAILER_LEN, TRAILER_MARK};
use crate::error::{Error, Result};
use crate::SnapshotMeta;

/// Incremental parser of the data region (frames and trailer), for the receiver.
struct FrameParser {
    header_crc: u32,
    state: ParseState,
    frames: u64,
    payload_bytes: u64,
}

enum ParseState {
    /// Collecting the 8-byte frame header (or the first bytes of the trailer).
    Head {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Inside a frame's payload.
    Payload {
        len: u32,
        remaining: u32,
        crc: u32,
        hasher: crc32fast::Hasher,
    },
    /// Collecting the trailer.
    Trailer { buf: [u8; TRAILER_LEN], have: usize },
    /// The trailer was complete and valid.
    Done,
}

impl FrameParser {
    fn new(header_crc: u32) -> FrameParser {
        FrameParser {
            header_crc,
            state: ParseState::Head {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            },
            frames: 0,
            payload_bytes: 0,
        }
    }

    /// Consumes all of `data`, checking it. `Err(reason)` on the first inconsistency.
    fn feed(&mut self, mut data: &[u8]) -> std::result::Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                ParseState::Head { buf, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have >= 4 {
                        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        if len == TRAILER_MARK {
                            let mut trailer = [0u8; TRAILER_LEN];
                            trailer[..*have].copy_from_slice(&buf[..*have]);
                            self.state = ParseState::Trailer {
                                buf: trailer,
                                have: *have,
                            };
                            continue;
                        }
                        if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX {
                            return Err(format!("frame {} has invalid length {len}", self.frames));
                        }
                    }
                    if *have == FRAME_HEADER_LEN {
                        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        let mut hasher = crc32fast::Hasher::new();
                        hasher.update(&self.header_crc.to_le_bytes());
                        hasher.update(&self.frames.to_le_bytes());
                        hasher.update(&len.to_le_bytes());
                        self.state = ParseState::Payload {
                            len,
                            remaining: len,
                            crc,
                            hasher,
                        };
                    }
                }
                ParseState::Payload {
                    len,
                    remaining,
                    crc,
                    hasher,
                } => {
                    let n = (*remaining as usize).min(data.len());
                    hasher.update(&data[..n]);
                    *remaining -= n as u32;
                    data = &data[n..];
                    if *remaining == 0 {
                        let actual = hasher.clone().finalize();
                        if actual != *crc {
                            return Err(format!(
                                "frame {} checksum mismatch: stored {:#010x}, computed {actual:#010x}",
                                self.frames, *crc
                            ));
                        }
                        self.payload_bytes += u64::from(*len);
                        self.frames += 1;
                        self.state = ParseState::Head {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                ParseState::Trailer { buf, have } => {
                    let n = (TRAILER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == TRAILER_LEN {
                        check_trailer(self.header_crc, buf, self.frames, self.payload_bytes)?;
                        self.state = ParseState::Done;
                    }
                }
                ParseState::Done => {
                    return Err(format!("{} bytes after the trailer", data.len()));
                }
            }
        }
        Ok(())
    }
}

/// Receives a snapshot's raw data region from a leader (see the module docs). Dropping it
/// without [`SnapshotReceiver::finish`] discards it.
pub struct SnapshotReceiver {
    parser: FrameParser,
    received: u64,
    target: TempTarget,
    meta: SnapshotMeta,
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReceiver")
            .field("temp_path", &self.target.temp_path)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    pub(super) fn new(target: TempTarget, meta: SnapshotMeta) -> SnapshotReceiver {
        SnapshotReceiver {
            parser: FrameParser::new(target.header_crc),
            received: 0,
            target,
            meta,
        }
    }

    /// Appends the raw bytes a leader read with [`SnapshotStore::read_chunk`](super::SnapshotStore::read_chunk) at `offset`.
    /// `offset` must equal [`SnapshotReceiver::received`] (chunks arrive in order, no gaps);
    /// otherwise, or if the bytes fail a frame checksum, the error says so and the caller
    /// should drop this receiver and restart the transfer from offset 0.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset != self.received {
            return Err(Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!(
                    "chunk at offset {offset} does not follow the {} bytes received",
                    self.received
                ),
            });
        }
        self.parser
            .feed(data)
            .map_err(|reason| Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!("received data: {reason}"),
            })?;
        self.target.write_all(data)?;
        self.received += data.len() as u64;
        Ok(())
    }

    /// Bytes of the data region received so far (the next expected offset).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks that the trailer arrived, then installs the snapshot like
    /// [`SnapshotWriter::finish`](super::SnapshotWriter::finish).
    pub fn finish(self) -> Result<SnapshotMeta> {
        if !matches!(self.parser.state, ParseState::Done) {
            return Err(Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!(
                    "transfer ended after {} bytes ({} complete frames) without a trailer",
                    self.received, self.parser.frames
                ),
            });
        }
        let SnapshotReceiver { target, meta, .. } = self;
        target.install((meta.last_index, meta.last_term))?;
        Ok(meta)
    }

    /// Discards the partial snapshot.
    pub fn abort(mut self) -> Result<()> {
        self.target.remove()
    }
}

#[cfg(test)]
mod tests {
    use crate::snapshot::format::encode_header;
    use crate::snapshot::test_support::{flip, meta, payload, read_all, transfer, write};
    use crate::snapshot::{SnapshotStore, FRAME_PAYLOAD_BYTES};

    #[test]
    fn transfer_by_raw_chunks_reproduces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let leader = SnapshotStore::open(dir.path().join("a")).unwrap();
        let follower = SnapshotStore::open(dir.path().join("b")).unwrap();
        let data = payload(10, 2 * 1024 * 1024 + 999);
        let m = write(&leader, meta(80, 4), &data);
        assert_eq!(
            leader.data_len(&m).unwrap() as usize,
            std::fs::read(leader.file_path(80, 4)).unwrap().len()
                - encode_header(&m).unwrap().0.len()
        );
        // Chunk sizes that straddle frame headers and the trailer.
        for (n, chunk) in [4093u64, 65_541, 1 << 20].into_iter().enumerate() {
            let target = SnapshotStore::open(dir.path().join(format!("c{n}"))).unwrap();
            let got = transfer(&leader, &target, &m, chunk).unwrap();
            assert_eq!(got, m);
            assert_eq!(
                std::fs::read(target.file_path(80, 4)).unwrap(),
                std::fs::read(leader.file_path(80, 4)).unwrap(),
                "chunk size {chunk}"
            );
        }
        transfer(&leader, &follower, &m, 300_000).unwrap();
        assert_eq!(read_all(&follower, &m).unwrap(), data);
        // One byte at a time through the receiver's parser (every split point).
        let small = write(
            &leader,
            meta(81, 4),
            &payload(12, 2 * FRAME_PAYLOAD_BYTES as u64 + 5),
        );
        let (region, done) = leader.read_chunk(&small, 0, u64::MAX).unwrap();
        assert!(done);
        let one = SnapshotStore::open(dir.path().join("one")).unwrap();
        let mut rx = one.begin_receive(small.clone()).unwrap();
        for (i, b) in region.iter().enumerate() {
            rx.write_chunk(i as u64, &[*b]).unwrap();
        }
        rx.finish().unwrap();
        assert_eq!(
            std::fs::read(one.file_path(81, 4)).unwrap(),
            std::fs::read(leader.file_path(81, 4)).unwrap()
        );
    }

    #[test]
    fn transfer_rejects_corrupt_gapped_or_truncated_data() {
        let dir = tempfile::tempdir().unwrap();
        let leader = SnapshotStore::open(dir.path().join("a")).unwrap();
        let follower = SnapshotStore::open(dir.path().join("b")).unwrap();
        let m = write(&leader, meta(90, 4), &payload(11, 300_000));
        // Damage on the sender's disk is caught by the receiver.
        let path = leader.file_path(90, 4);
        let good = std::fs::read(&path).unwrap();
        flip(&path, 200_000);
        let err = transfer(&leader, &follower, &m, 50_000).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &good).unwrap();
        // A gap.
        let mut rx = follower.begin_receive(m.clone()).unwrap();
        let (bytes, _) = leader.read_chunk(&m, 0, 1000).unwrap();
        rx.write_chunk(0, &bytes).unwrap();
        let err = rx.write_chunk(2000, &bytes).unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
        // Ends early.
        let mut rx = follower.begin_receive(m.clone()).unwrap();
        let (bytes, done) = leader.read_chunk(&m, 0, 100_000).unwrap();
        assert!(!done);
        rx.write_chunk(0, &bytes).unwrap();
        let err = rx.finish().unwrap_err();
        assert!(err.to_string().contains("without a trailer"), "{err}");
        // Wrong meta on the receiving side: header crc differs, so frames fail.
        let err = transfer(&leader, &follower, &m, 100_000)
            .and_then(|_| {
                let mut rx = follower.begin_receive(meta(90, 5))?;
                let (bytes, _) = leader.read_chunk(&m, 0, 100_000)?;
                rx.write_chunk(0, &bytes)
            })
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Nothing half-written was installed.
        assert_eq!(follower.list().unwrap(), vec![m]);
    }
}
