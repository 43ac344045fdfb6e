//! Snapshot files: checksummed, written and read as streams of chunks, installed atomically.
//!
//! # File layout
//! ```text
//! file    = header | frame* | trailer
//! header  = | magic "RAFTSNAP" | version u32 (=1) | meta_len u32 | meta (bincode 2) | header_crc u32 |
//! frame   = | len u32 (1..=1 MiB) | crc u32 | payload (len bytes) |
//!             crc = crc32(header_crc ‖ frame_number u64 ‖ len u32 ‖ payload)
//! trailer = | 0xFFFF_FFFF u32 | frame_count u64 | payload_bytes u64 |
//!             crc32(header_crc ‖ 0xFFFF_FFFF ‖ frame_count ‖ payload_bytes) u32 |
//! ```
//! All integers are little-endian; `meta` is the [`SnapshotMeta`](crate::SnapshotMeta) (last index, last term,
//! membership). Every frame's checksum is seeded with the header's and numbers the frame, so
//! a frame that is damaged, lost, duplicated, reordered or copied from another snapshot fails
//! verification; the trailer catches truncation at a frame boundary and trailing garbage.
//! A reader never hands out a byte of a frame before that frame's checksum has passed, and
//! holds at most one frame (at most 1 MiB; the writer emits 64 KiB frames) in memory.
//!
//! # Installing a file
//! Following sled's ARCHITECTURE.md: write to `snap-<index>-<term>.<pid>.<n>.tmp`, fsync,
//! rename to `snap-<index:020>-<term:020>.snap`, fsync the directory. A crash at any point
//! leaves either the complete new file or none (plus a temp file, removed by the next
//! [`SnapshotStore::open`]); the previous snapshot is untouched until the new one is durable,
//! and only then are snapshots beyond the newest `keep` (default 2) deleted.
//!
//! # Transfer (InstallSnapshot)
//! The leader ships *raw file bytes*: [`SnapshotStore::read_chunk`] returns bytes of the
//! data region (everything after the header: frames and trailer) at a byte offset. The
//! follower writes them, in order, through [`SnapshotStore::begin_receive`] +
//! [`SnapshotReceiver::write_chunk`], which rebuilds the header from the same meta (the
//! header is a deterministic function of it) and appends the raw bytes, verifying each
//! frame's checksum and the trailer as they stream in. The follower's file is therefore
//! byte-identical to the leader's, and the leader's checksums protect the data end to end:
//! a corrupt frame, sent or received, fails the transfer instead of being re-checksummed.
//! Producers of a new snapshot (the state machine) use [`SnapshotStore::begin`] and write
//! the logical payload; it is framed for them.
//!
//! # Where the code is
//! - `store.rs`: [`SnapshotStore`], the directory: naming, listing, retention,
//!   quarantine, and the raw chunks a leader sends.
//! - `format.rs`: the byte layout above: header, frame checksums, trailer.
//! - `writer.rs`: [`SnapshotWriter`] and the temp file both new and received snapshots
//!   are written to and installed from.
//! - `receiver.rs`: [`SnapshotReceiver`], checking an InstallSnapshot stream as it arrives.
//! - `reader.rs`: [`SnapshotReader`], verifying each frame before handing out its bytes.

mod format;
mod reader;
mod receiver;
mod store;
#[cfg(test)]
mod test_support;
mod writer;

pub use reader::SnapshotReader;
pub use receiver::SnapshotReceiver;
pub use store::SnapshotStore;
pub use writer::SnapshotWriter;

pub(crate) use format::{encode_trailer, frame_crc};

use crate::error::Error;

const MAGIC: &[u8; 8] = b"RAFTSNAP";
const VERSION: u32 = 1;
/// Bytes of header before the meta: magic, version, meta_len.
const HEADER_FIXED_LEN: usize = 16;
/// Refuse to allocate for absurd meta lengths read from a damaged header.
const META_LEN_MAX: u32 = 16 * 1024 * 1024;
/// Payload bytes per frame the writer emits.
const FRAME_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest frame payload a reader accepts (bounds reader memory).
const FRAME_PAYLOAD_BYTES_MAX: u32 = 1024 * 1024;
const FRAME_HEADER_LEN: usize = 8;
/// Length-field value that marks the trailer instead of a frame.
const TRAILER_MARK: u32 = u32::MAX;
/// The whole trailer, including the mark.
const TRAILER_LEN: usize = 24;
/// Snapshots kept by default.
pub const DEFAULT_KEEP: usize = 2;

const FILE_PREFIX: &str = "snap-";
const FILE_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io { source, .. } => source,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}
