//! An appender's batch, encoded for writing without copying large payloads.
//!
//! Record headers and small payloads are laid out back to back in one buffer; a payload
//! of [`OUT_OF_LINE_PAYLOAD_BYTES`] or more is kept as the caller's [`Bytes`] and written
//! from there with `pwritev`. Measured here, copying a 16 MiB batch into a fresh buffer
//! cost more than its CRC (7-14 GB/s against 20 GB/s): with it, appends of 1 MiB or more
//! per sync ran at 0.81-0.86x of a bare write of pre-encoded bytes.

use std::io::IoSlice;
use std::ops::Range;

use bytes::Bytes;

use super::record::{self, RECORD_HEADER_BYTES};
use crate::Entry;

/// Payloads of at least this many bytes are written from the caller's buffer; shorter
/// ones are copied next to their header, since for them one more `iovec` would cost
/// more than the copy.
pub const OUT_OF_LINE_PAYLOAD_BYTES: usize = 1024;

/// A batch of records, encoded unsalted (salt 0) until it is known which segment
/// each record lands in.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    /// Each record's header and, if small, its payload, back to back.
    buf: Vec<u8>,
    /// Where each record's part of `buf` ends: 4 bytes per record keeps batches of
    /// small records cheap to build and walk.
    ends: Vec<u32>,
    /// The payloads kept apart, with the number of the record they belong to.
    large: Vec<(usize, Bytes)>,
    bytes: usize,
}

impl EncodedBatch {
    /// Encodes `entries` (already checked by the caller).
    pub fn encode(entries: &[Entry]) -> EncodedBatch {
        let inline = |e: &Entry| e.payload.len() < OUT_OF_LINE_PAYLOAD_BYTES;
        let buf_bytes: usize = entries
            .iter()
            .map(|e| RECORD_HEADER_BYTES + if inline(e) { e.payload.len() } else { 0 })
            .sum();
        let mut batch = EncodedBatch {
            buf: Vec::with_capacity(buf_bytes),
            ends: Vec::with_capacity(entries.len()),
            large: Vec::new(),
            bytes: 0,
        };
        let crc = record::crc_hasher();
        for (k, e) in entries.iter().enumerate() {
            if inline(e) {
                // One CRC call over the contiguous record: cheaper for small records.
                record::encode_record_with(e, &crc, &mut batch.buf);
            } else {
                batch.buf.extend_from_slice(&record::encode_header(e, &crc));
                batch.large.push((k, e.payload.clone()));
            }
            batch.ends.push(batch.buf.len() as u32);
            batch.bytes += record::record_len(e.payload.len());
        }
        batch
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of all records.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Where record `k`'s part of `buf` starts.
    fn start(&self, k: usize) -> usize {
        match k {
            0 => 0,
            _ => self.ends[k - 1] as usize,
        }
    }

    /// The payloads kept apart that belong to records `range`, in order.
    fn large_in(&self, range: &Range<usize>) -> &[(usize, Bytes)] {
        let lo = self.large.partition_point(|(r, _)| *r < range.start);
        let hi = self.large.partition_point(|(r, _)| *r < range.end);
        &self.large[lo..hi]
    }

    /// Bytes of records `range`.
    pub fn range_len(&self, range: Range<usize>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let inline = self.ends[range.end - 1] as usize - self.start(range.start);
        let large: usize = self.large_in(&range).iter().map(|(_, b)| b.len()).sum();
        (inline + large) as u64
    }

    /// Bytes of record `k`.
    pub fn record_len(&self, k: usize) -> u64 {
        self.range_len(k..k + 1)
    }

    /// Appends to `out` the offset of each record of `range` when the first one is
    /// written at `offset`.
    pub fn push_offsets(&self, range: Range<usize>, mut offset: u64, out: &mut Vec<u32>) {
        if self.large.is_empty() {
            let first = self.start(range.start);
            out.extend(range.map(|k| (offset + (self.start(k) - first) as u64) as u32));
            return;
        }
        for k in range {
            out.push(offset as u32);
            offset += self.record_len(k);
        }
    }

    /// Marks record `k` as the first of a write ([`record::mark_run_start`]). A record
    /// is written once, so it is marked at most once.
    pub fn mark_run_start(&mut self, k: usize) {
        let start = self.start(k);
        let payload_len = self.record_len(k) as usize - RECORD_HEADER_BYTES;
        record::mark_run_start(
            &mut self.buf[start..start + RECORD_HEADER_BYTES],
            payload_len,
        );
    }

    /// XORs `salt` into the CRC of records `range`.
    pub fn salt(&mut self, range: Range<usize>, salt: u32) {
        for k in range {
            let start = self.start(k);
            record::salt_record(&mut self.buf[start..], salt);
        }
    }

    /// Appends the bytes of records `range`, in order, to `out`.
    pub fn push_slices<'a>(&'a self, range: Range<usize>, out: &mut Vec<IoSlice<'a>>) {
        if range.is_empty() {
            return;
        }
        // Runs of inline records are one slice of `buf`; a payload kept apart splits them.
        let mut run_start = self.start(range.start);
        for (k, payload) in self.large_in(&range) {
            let end = self.ends[*k] as usize;
            out.push(IoSlice::new(&self.buf[run_start..end]));
            out.push(IoSlice::new(payload));
            run_start = end;
        }
        let end = self.ends[range.end - 1] as usize;
        if end > run_start {
            out.push(IoSlice::new(&self.buf[run_start..end]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    /// Entries 1, 2, ... with payloads of `lens` bytes.
    fn entries(lens: &[usize]) -> Vec<Entry> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| Entry {
                index: i as u64 + 1,
                term: 3,
                kind: EntryKind::Normal,
                payload: Bytes::from(vec![i as u8 + 1; len]),
            })
            .collect()
    }

    #[test]
    fn slices_are_the_records_back_to_back() {
        let entries = entries(&[0, 10, 5000, 3, 1023, 1024, 70_000, 1]);
        let mut expected = Vec::new();
        for e in &entries {
            record::encode_record(e, &mut expected);
        }
        let batch = EncodedBatch::encode(&entries);
        assert_eq!(batch.len(), entries.len());
        assert_eq!(batch.bytes(), expected.len());
        for from in 0..entries.len() {
            for to in from..=entries.len() {
                let mut slices = Vec::new();
                batch.push_slices(from..to, &mut slices);
                let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
                let lo: usize = (0..from).map(|k| batch.record_len(k) as usize).sum();
                let hi: usize = (0..to).map(|k| batch.record_len(k) as usize).sum();
                assert_eq!(flat, expected[lo..hi], "records {from}..{to}");
                assert_eq!(batch.range_len(from..to), (hi - lo) as u64);
                let mut offsets = Vec::new();
                batch.push_offsets(from..to, 1000, &mut offsets);
                let mut at = 1000u64;
                let want: Vec<u32> = (from..to)
                    .map(|k| {
                        let o = at as u32;
                        at += batch.record_len(k);
                        o
                    })
                    .collect();
                assert_eq!(offsets, want, "offsets of records {from}..{to}");
            }
        }
        // Payloads at or above the threshold are not copied.
        let mut slices = Vec::new();
        batch.push_slices(0..entries.len(), &mut slices);
        assert!(slices
            .iter()
            .any(|s| s.as_ptr() == entries[6].payload.as_ptr()));
    }

    #[test]
    fn offsets_of_an_all_inline_batch() {
        let entries = entries(&[10, 20, 30, 40, 50]);
        let batch = EncodedBatch::encode(&entries);
        let mut offsets = Vec::new();
        batch.push_offsets(2..5, 64, &mut offsets);
        let len = |k: usize| record::record_len(entries[k].payload.len()) as u32;
        assert_eq!(offsets, vec![64, 64 + len(2), 64 + len(2) + len(3)]);
        assert_eq!(batch.range_len(2..5), u64::from(len(2) + len(3) + len(4)));
    }

    /// A marked record, inline or with its payload kept apart, still verifies and reads
    /// as the first of a write; its neighbours do not.
    #[test]
    fn marked_records_verify_and_carry_the_flag() {
        let entries = entries(&[10, 5000, 10]);
        for k in 0..entries.len() {
            let mut batch = EncodedBatch::encode(&entries);
            batch.salt(0..3, 0xABCD);
            batch.mark_run_start(k);
            let mut slices = Vec::new();
            batch.push_slices(0..3, &mut slices);
            let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            let mut at = 0;
            for j in 0..entries.len() {
                let h = record::decode_record(&flat[at..], 0xABCD).expect("verifies");
                assert_eq!(h.run_start, j == k, "record {j}, marked {k}");
                at += h.record_len();
            }
        }
    }

    #[test]
    fn salted_slices_verify_under_the_salt() {
        let entries = entries(&[2000; 3]);
        let mut batch = EncodedBatch::encode(&entries);
        batch.salt(1..3, 0x5EED);
        let mut slices = Vec::new();
        batch.push_slices(0..3, &mut slices);
        let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let len = batch.record_len(0) as usize;
        assert!(record::decode_record(&flat, 0).is_ok());
        assert!(record::decode_record(&flat[len..], 0x5EED).is_ok());
        assert!(record::decode_record(&flat[len..], 0).is_err());
        assert!(record::decode_record(&flat[2 * len..], 0x5EED).is_ok());
    }
}
