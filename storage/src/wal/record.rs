//! Byte layouts of the WAL: records, segment headers and the metadata file.
//!
//! All integers are little-endian. Zero-filled space (a prepared segment, the end
//! marker after the last record) never decodes as a record: a record's kind and index
//! are never 0, and its CRC covers both.
//!
//! Every record's stored CRC is XORed with its segment's *salt*, a number in the
//! segment header. A segment file that is recycled (reused after compaction instead of
//! deleted) gets a salt different from the one it had, so the records of its previous
//! life, still on disk past the new end of the log, never verify again.

use bytes::Bytes;

use crate::{Entry, EntryKind};

/// Bytes before a record's payload.
pub const RECORD_HEADER_BYTES: usize = 25;

/// The largest payload one record may carry. Offsets into a segment are kept as `u32`,
/// so a record (and a segment) must stay well below 4 GiB.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 30;

/// Bytes of the header that opens every segment.
pub const SEGMENT_HEADER_BYTES: usize = 32;

/// "RAFTLWAL": the first eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTLWAL";

/// On-disk format version of segments and records. Version 1 had no salt (its header
/// bytes 12..16 were reserved and zero), so a version 1 segment reads as salt 0.
/// Version 2 did not mark where each write starts ([`RUN_START_FLAG`]), so recovery
/// cannot tell a torn write from damage in synced data there and refuses both.
pub const SEGMENT_VERSION: u32 = 3;

/// The first segment version whose records carry [`RUN_START_FLAG`].
pub const FIRST_VERSION_MARKING_RUNS: u32 = 3;

/// Bit of a record's `len` field set on the first record of each write (one `pwritev`
/// followed by one fdatasync): lengths stay below [`PAYLOAD_BYTES_MAX`] `+ 1`, so the
/// top bit is free. The CRC covers it like every other bit. Recovery uses it to tell
/// where the last sync span starts (`recovery.rs`).
pub const RUN_START_FLAG: u32 = 1 << 31;

/// On-disk format version of the metadata file.
pub const META_VERSION: u32 = 1;

/// "RLWALMET": the first eight bytes of the metadata file.
pub const META_MAGIC: [u8; 8] = *b"RLWALMET";

/// Bytes of the metadata file.
pub const META_BYTES: usize = 32;

/// Total bytes the record for `payload_len` bytes takes on disk.
pub fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

// record = | crc32 ^ salt u32 | run_start 1 bit, len 31 bits | term u64 | index u64 |
//          | kind u8 | payload |
//
// crc32 (crc32fast, IEEE) covers every byte after itself: len, term, index, kind and the
// payload, as one contiguous slice so recovery checks a record with a single call. The
// index is stored so a record found at the wrong place fails the "index == expected"
// check even though its CRC is fine. The salt is XORed in when the segment the record
// lands in is known (see [`salt_record`]), so appenders can encode outside any lock.

/// The record header for `entry` with its CRC field zero, and a hasher ready to take
/// the bytes the CRC covers.
#[inline]
fn header_fields(entry: &Entry) -> [u8; RECORD_HEADER_BYTES] {
    assert!(
        entry.payload.len() <= PAYLOAD_BYTES_MAX,
        "payload of entry {} is {} bytes, above the {} byte limit checked by Wal::append",
        entry.index,
        entry.payload.len(),
        PAYLOAD_BYTES_MAX
    );
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[4..8].copy_from_slice(&(entry.payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&entry.term.to_le_bytes());
    h[16..24].copy_from_slice(&entry.index.to_le_bytes());
    h[24] = entry.kind as u8;
    h
}

/// A CRC hasher in its initial state. Cloning one skips the CPU feature detection that
/// `crc32fast::hash` repeats per call, which shows at 25 ns per small record.
pub fn crc_hasher() -> crc32fast::Hasher {
    crc32fast::Hasher::new()
}

/// The header of the record for `entry`, unsalted (salt 0); its payload follows it.
/// `crc` is a hasher from [`crc_hasher`].
pub fn encode_header(entry: &Entry, crc: &crc32fast::Hasher) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = header_fields(entry);
    let mut crc = crc.clone();
    crc.update(&h[4..]);
    crc.update(&entry.payload);
    h[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Appends the record for `entry` to `out`, unsalted (salt 0). Same bytes as
/// [`encode_header`] and the payload, with the CRC computed in one call. `crc` is a
/// hasher from [`crc_hasher`].
#[inline]
pub fn encode_record_with(entry: &Entry, crc: &crc32fast::Hasher, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(RECORD_HEADER_BYTES + entry.payload.len());
    out.extend_from_slice(&header_fields(entry));
    out.extend_from_slice(&entry.payload);
    let mut crc = crc.clone();
    crc.update(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Appends the record for `entry` to `out`, unsalted (salt 0).
pub fn encode_record(entry: &Entry, out: &mut Vec<u8>) {
    encode_record_with(entry, &crc_hasher(), out);
}

/// XORs `salt` into the stored CRC of the record that starts `record`. Applying the
/// same salt twice undoes it.
#[inline]
pub fn salt_record(record: &mut [u8], salt: u32) {
    let stored = u32_at(record, 0) ^ salt;
    record[0..4].copy_from_slice(&stored.to_le_bytes());
}

/// Sets [`RUN_START_FLAG`] in the record whose header is `header` (salted or not) and
/// whose payload is `payload_len` bytes, and updates its CRC to match without reading
/// the payload: CRC-32 is linear, so flipping one bit changes it by the CRC of that bit
/// alone shifted past the bytes after it, which `crc32fast`'s `combine` computes in
/// O(log n). The flag is set under the appenders' lock, when the write is formed, so
/// it must not cost a pass over a large payload.
pub fn mark_run_start(header: &mut [u8], payload_len: usize) {
    let len_field = u32_at(header, 4);
    assert!(
        len_field == payload_len as u32,
        "record length field {len_field:#x} is not the payload length {payload_len} \
         (flag already set?)"
    );
    // The CRC covers bytes 4.. of the record; the flag is bit 7 of the fourth of them.
    let flag_bytes = RUN_START_FLAG.to_le_bytes();
    let flag_alone = crc32fast::hash(&flag_bytes) ^ crc32fast::hash(&[0u8; 4]);
    let bytes_after_flag = (RECORD_HEADER_BYTES - 8 + payload_len) as u64;
    let mut shifted = crc32fast::Hasher::new_with_initial(flag_alone);
    shifted.combine(&crc32fast::Hasher::new_with_initial_len(
        0,
        bytes_after_flag,
    ));
    let stored = u32_at(header, 0) ^ shifted.finalize();
    header[0..4].copy_from_slice(&stored.to_le_bytes());
    header[4..8].copy_from_slice(&(len_field | RUN_START_FLAG).to_le_bytes());
}

/// The fixed fields of a record that passed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload bytes.
    pub len: u32,
    /// Entry term.
    pub term: u64,
    /// Entry index.
    pub index: u64,
    /// Entry kind.
    pub kind: EntryKind,
    /// The record is the first of a write ([`RUN_START_FLAG`]).
    pub run_start: bool,
}

impl RecordHeader {
    /// Bytes of the whole record.
    pub fn record_len(&self) -> usize {
        record_len(self.len as usize)
    }
}

/// Why the bytes at an offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header is all zeros: prepared, never written space (the end of the log when
    /// everything after it is zero too).
    Zeros,
    /// Fewer bytes remain than a header or the stated length needs.
    Truncated,
    /// The kind byte is not a known [`EntryKind`].
    BadKind(u8),
    /// The stored CRC does not match the bytes.
    BadCrc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC of the bytes as found.
        computed: u32,
    },
}

impl DecodeError {
    /// A sentence for error messages.
    pub fn describe(&self) -> String {
        match self {
            DecodeError::Zeros => "zero-filled record header".to_string(),
            DecodeError::Truncated => "record extends past the end of the segment".to_string(),
            DecodeError::BadKind(k) => format!("invalid entry kind byte {k}"),
            DecodeError::BadCrc { stored, computed } => {
                format!("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

#[inline]
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

#[inline]
fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads the header fields at the start of `buf` without checking the CRC. For term
/// lookups of records already verified by recovery or written by this process.
#[inline]
pub fn peek_header(buf: &[u8]) -> Result<RecordHeader, DecodeError> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    let len_field = u32_at(buf, 4);
    let len = len_field & !RUN_START_FLAG;
    let term = u64_at(buf, 8);
    let index = u64_at(buf, 16);
    let kind_byte = buf[24];
    let Some(kind) = EntryKind::from_u8(kind_byte) else {
        if kind_byte == 0 && u32_at(buf, 0) == 0 && len_field == 0 && term == 0 && index == 0 {
            return Err(DecodeError::Zeros);
        }
        return Err(DecodeError::BadKind(kind_byte));
    };
    Ok(RecordHeader {
        len,
        term,
        index,
        kind,
        run_start: len_field & RUN_START_FLAG != 0,
    })
}

/// Decodes and verifies the record at the start of `buf` (which may run on past it),
/// written into a segment whose salt is `salt`.
#[inline]
pub fn decode_record(buf: &[u8], salt: u32) -> Result<RecordHeader, DecodeError> {
    let header = peek_header(buf)?;
    let end = RECORD_HEADER_BYTES as u64 + header.len as u64;
    if end > buf.len() as u64 {
        return Err(DecodeError::Truncated);
    }
    let stored = u32_at(buf, 0) ^ salt;
    let computed = crc32fast::hash(&buf[4..end as usize]);
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    Ok(header)
}

/// Decodes, verifies and copies out the entry whose record starts `buf`.
pub fn decode_entry(buf: &[u8], salt: u32) -> Result<Entry, DecodeError> {
    let h = decode_record(buf, salt)?;
    Ok(Entry {
        index: h.index,
        term: h.term,
        kind: h.kind,
        payload: Bytes::copy_from_slice(&buf[RECORD_HEADER_BYTES..h.record_len()]),
    })
}

// segment header = | magic [u8; 8] | version u32 | salt u32 | first_index u64 |
//                  | crc32 u32 (of the preceding 24 bytes) | reserved u32 (0) |

/// The fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version ([`SEGMENT_VERSION`] for segments written now).
    pub version: u32,
    /// Index of the first record in the segment.
    pub first_index: u64,
    /// XORed into every record's stored CRC (0 in version 1 segments).
    pub salt: u32,
}

/// The salt for a segment starting at `first_index` in a file whose previous salt was
/// `previous` (`None` for a new file): any value works as long as it differs from the
/// previous one, and a mix of the index makes equal salts in neighbours unlikely.
pub fn segment_salt(first_index: u64, previous: Option<u32>) -> u32 {
    let mut z = first_index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let salt = (z ^ (z >> 31)) as u32;
    if previous == Some(salt) {
        salt.wrapping_add(1)
    } else {
        salt
    }
}

/// Encodes a segment header.
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&header.version.to_le_bytes());
    h[12..16].copy_from_slice(&header.salt.to_le_bytes());
    h[16..24].copy_from_slice(&header.first_index.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `Err` naming both when `buf` (at least 8 bytes) does not start with `magic`.
fn check_magic(buf: &[u8], magic: &[u8; 8]) -> Result<(), String> {
    if buf[0..8] != *magic {
        return Err(format!("magic is {:?}, expected {:?}", &buf[0..8], magic));
    }
    Ok(())
}

/// Decodes a segment header; `Err` says what is wrong with it.
pub fn decode_segment_header(buf: &[u8]) -> Result<SegmentHeader, String> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than the {SEGMENT_HEADER_BYTES} byte header",
            buf.len()
        ));
    }
    check_magic(buf, &SEGMENT_MAGIC)?;
    let version = u32_at(buf, 8);
    if !(1..=SEGMENT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, this build reads versions 1 to {SEGMENT_VERSION} \
             (was the log written by a newer raftlog?)"
        ));
    }
    let stored = u32_at(buf, 24);
    let computed = crc32fast::hash(&buf[0..24]);
    if stored != computed {
        return Err(format!(
            "header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if u32_at(buf, 28) != 0 {
        return Err(format!(
            "reserved bytes 28..32 are {:#010x}, not zero",
            u32_at(buf, 28)
        ));
    }
    Ok(SegmentHeader {
        version,
        first_index: u64_at(buf, 16),
        salt: u32_at(buf, 12),
    })
}

/// The WAL's metadata file: what the segments alone cannot say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The logical first index: entries below it are compacted even if a segment still
    /// holds them.
    pub first_index: u64,
    /// A `truncate_suffix(from)` that was decided but may not have been carried out
    /// completely: recovery drops entries `>= from` before anything else (0: none).
    pub truncate_from: u64,
}

// meta = | magic [u8; 8] | version u32 | crc32 u32 (of bytes 16..32) |
//        | first_index u64 | truncate_from u64 |

/// Encodes the metadata file.
pub fn encode_meta(meta: &Meta) -> [u8; META_BYTES] {
    let mut b = [0u8; META_BYTES];
    b[0..8].copy_from_slice(&META_MAGIC);
    b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&meta.first_index.to_le_bytes());
    b[24..32].copy_from_slice(&meta.truncate_from.to_le_bytes());
    let crc = crc32fast::hash(&b[16..32]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the metadata file; `Err` says what is wrong with it.
pub fn decode_meta(buf: &[u8]) -> Result<Meta, String> {
    if buf.len() != META_BYTES {
        return Err(format!("{} bytes, expected {META_BYTES}", buf.len()));
    }
    check_magic(buf, &META_MAGIC)?;
    let version = u32_at(buf, 8);
    if version != META_VERSION {
        return Err(format!(
            "format version {version}, this build reads version {META_VERSION}"
        ));
    }
    let stored = u32_at(buf, 12);
    let computed = crc32fast::hash(&buf[16..32]);
    if stored != computed {
        return Err(format!(
            "CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(Meta {
        first_index: u64_at(buf, 16),
        truncate_from: u64_at(buf, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, payload: &[u8]) -> Entry {
        Entry {
            index,
            term: 7,
            kind: EntryKind::Normal,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn record_round_trips() {
        let e = entry(42, b"hello");
        let mut buf = Vec::new();
        encode_record(&e, &mut buf);
        assert_eq!(buf.len(), record_len(5));
        assert_eq!(decode_entry(&buf, 0), Ok(e));
    }

    #[test]
    fn zeros_never_decode() {
        let zeros = [0u8; 64];
        assert_eq!(decode_record(&zeros, 0), Err(DecodeError::Zeros));
        assert_eq!(decode_record(&zeros, 0x1234_5678), Err(DecodeError::Zeros));
        // A zero header on its own is also not a record.
        assert!(decode_record(&zeros[..RECORD_HEADER_BYTES], 0).is_err());
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&entry(3, b"payload bytes"), &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&damaged, 0).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode_record(&entry(3, b"payload bytes"), &mut buf);
        for cut in 0..buf.len() {
            assert!(
                decode_record(&buf[..cut], 0).is_err(),
                "cut at {cut} decoded"
            );
        }
    }

    #[test]
    fn segment_header_and_meta_round_trip_and_reject_damage() {
        let header = SegmentHeader {
            version: SEGMENT_VERSION,
            first_index: 42,
            salt: 0xDEAD_BEEF,
        };
        let h = encode_segment_header(header);
        assert_eq!(decode_segment_header(&h), Ok(header));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        assert!(decode_segment_header(&[0u8; SEGMENT_HEADER_BYTES]).is_err());

        let m = Meta {
            first_index: 5001,
            truncate_from: 0,
        };
        let b = encode_meta(&m);
        assert_eq!(decode_meta(&b), Ok(m));
        let mut bad = b;
        bad[20] ^= 0x80;
        assert!(decode_meta(&bad).is_err());
    }

    #[test]
    fn a_record_verifies_only_under_the_salt_it_was_written_with() {
        let e = entry(9, b"recycled");
        let mut buf = Vec::new();
        encode_record(&e, &mut buf);
        salt_record(&mut buf, 0x0BAD_F00D);
        assert_eq!(decode_entry(&buf, 0x0BAD_F00D), Ok(e.clone()));
        for other in [0, 0x0BAD_F00C, 0x8BAD_F00D, u32::MAX] {
            assert!(
                matches!(decode_record(&buf, other), Err(DecodeError::BadCrc { .. })),
                "verified under salt {other:#x}"
            );
        }
        salt_record(&mut buf, 0x0BAD_F00D);
        assert_eq!(decode_entry(&buf, 0), Ok(e));
    }

    #[test]
    fn a_recycled_file_never_gets_its_previous_salt() {
        for first_index in [1, 2, 1000, u64::MAX] {
            let salt = segment_salt(first_index, None);
            assert_ne!(segment_salt(first_index, Some(salt)), salt);
        }
        assert_ne!(segment_salt(1, None), segment_salt(2, None));
    }

    #[test]
    fn a_version_1_header_reads_as_salt_0() {
        // Version 1 wrote zeros where the salt now is; its CRC covered them.
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[16..24].copy_from_slice(&77u64.to_le_bytes());
        let crc = crc32fast::hash(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&h),
            Ok(SegmentHeader {
                version: 1,
                first_index: 77,
                salt: 0
            })
        );
        h[8..12].copy_from_slice(&4u32.to_le_bytes());
        let crc = crc32fast::hash(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        let err = decode_segment_header(&h).expect_err("version 4 accepted");
        assert!(err.contains("version 4"), "{err}");
    }

    /// The CRC patched by `mark_run_start` is the one a full pass over the flagged bytes
    /// gives, salted or not, for payloads short and long (inline and out of line).
    #[test]
    fn a_run_start_flag_keeps_the_record_verifiable() {
        for len in [0, 1, 24, 1000, 1024, 70_000] {
            let e = entry(12, &vec![0x5Au8; len]);
            for salt in [0, 0xC0FF_EE11] {
                let mut buf = Vec::new();
                encode_record(&e, &mut buf);
                salt_record(&mut buf, salt);
                let unflagged = buf.clone();
                mark_run_start(&mut buf, len);
                let h = decode_record(&buf, salt).expect("flagged record verifies");
                assert!(h.run_start, "payload of {len} bytes");
                assert_eq!(h.len as usize, len);
                assert_eq!(decode_entry(&buf, salt), Ok(e.clone()));
                let plain = decode_record(&unflagged, salt).expect("unflagged verifies");
                assert!(!plain.run_start);
                // The flag alone, without the CRC update, is damage.
                let mut forged = unflagged.clone();
                forged[7] |= 0x80;
                assert!(
                    decode_record(&forged, salt).is_err(),
                    "payload of {len} bytes"
                );
            }
        }
    }

    #[test]
    fn header_and_payload_encode_as_the_whole_record() {
        for len in [0, 1, 100, 5000] {
            let e = entry(11, &vec![3u8; len]);
            let mut whole = Vec::new();
            encode_record(&e, &mut whole);
            let mut split = encode_header(&e, &crc_hasher()).to_vec();
            split.extend_from_slice(&e.payload);
            assert_eq!(whole, split, "payload of {len} bytes");
        }
    }
}
