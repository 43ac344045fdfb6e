//! The byte layout of a snapshot file (see the module docs of `snapshot`): encoding and
//! checking the header, the frame checksums and the trailer.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{HEADER_FIXED_LEN, MAGIC, META_LEN_MAX, TRAILER_LEN, TRAILER_MARK, VERSION};
use crate::error::{Error, Result};
use crate::SnapshotMeta;

/// Encodes the header for `meta`; returns it and its crc.
pub(super) fn encode_header(meta: &SnapshotMeta) -> Result<(Vec<u8>, u32)> {
    let meta_bytes =
        bincode::serde::encode_to_vec(meta, bincode::config::standard()).map_err(|e| {
            Error::SnapshotCorrupt {
                file: PathBuf::new(),
                reason: format!("cannot encode snapshot meta: {e}"),
            }
        })?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|&l| l <= META_LEN_MAX)
        .ok_or_else(|| Error::SnapshotCorrupt {
            file: PathBuf::new(),
            reason: format!("snapshot meta of {} bytes is too large", meta_bytes.len()),
        })?;
    let mut header = Vec::with_capacity(HEADER_FIXED_LEN + meta_bytes.len() + 4);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&meta_bytes);
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    Ok((header, crc))
}

/// Reads and checks the header of `path`: `(meta, header_crc, header_len)`.
fn read_header_from(file: &mut File, path: &Path) -> Result<(SnapshotMeta, u32, u64)> {
    let bad = |reason: String| Error::BadHeader {
        file: path.to_path_buf(),
        what: "snapshot",
        reason,
    };
    let mut fixed = [0u8; HEADER_FIXED_LEN];
    read_full(file, &mut fixed, path)
        .map_err(|_| bad("file is shorter than a snapshot header".to_string()))?;
    if &fixed[..8] != MAGIC {
        return Err(bad(format!(
            "magic is {:?}, expected {:?}",
            &fixed[..8],
            MAGIC
        )));
    }
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads version {VERSION}"
        )));
    }
    let meta_len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if meta_len > META_LEN_MAX {
        return Err(bad(format!(
            "meta length {meta_len} exceeds {META_LEN_MAX}"
        )));
    }
    let mut rest = vec![0u8; meta_len as usize + 4];
    read_full(file, &mut rest, path)
        .map_err(|_| bad("file ends inside the snapshot header".to_string()))?;
    let (meta_bytes, crc_bytes) = rest.split_at(meta_len as usize);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(meta_bytes);
    let actual = hasher.finalize();
    if stored != actual {
        return Err(bad(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    let (meta, used) = bincode::serde::decode_from_slice::<SnapshotMeta, _>(
        meta_bytes,
        bincode::config::standard(),
    )
    .map_err(|e| bad(format!("cannot decode snapshot meta: {e}")))?;
    if used != meta_bytes.len() {
        return Err(bad(format!(
            "{} stray bytes after the snapshot meta",
            meta_bytes.len() - used
        )));
    }
    Ok((meta, stored, (HEADER_FIXED_LEN + rest.len()) as u64))
}

pub(super) fn read_header(path: &Path) -> Result<(SnapshotMeta, u32, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io("open snapshot", path, e))?;
    read_header_from(&mut file, path)
}

/// Opens `path`, checks that its header describes `meta`; returns the file positioned after
/// the header, the header crc and the header length.
pub(super) fn open_checked(path: &Path, meta: &SnapshotMeta) -> Result<(File, u32, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io("open snapshot", path, e))?;
    let (found, crc, len) = read_header_from(&mut file, path)?;
    if &found != meta {
        return Err(Error::SnapshotCorrupt {
            file: path.to_path_buf(),
            reason: format!("header describes {found:?}, expected {meta:?}"),
        });
    }
    Ok((file, crc, len))
}

/// `read_exact` that maps errors with the path.
fn read_full(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    file.read_exact(buf)
        .map_err(|e| Error::io("read snapshot", path, e))
}

pub(crate) fn frame_crc(header_crc: u32, frame_number: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(&frame_number.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn trailer_crc(header_crc: u32, frame_count: u64, payload_bytes: u64) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(&TRAILER_MARK.to_le_bytes());
    hasher.update(&frame_count.to_le_bytes());
    hasher.update(&payload_bytes.to_le_bytes());
    hasher.finalize()
}

pub(crate) fn encode_trailer(
    header_crc: u32,
    frame_count: u64,
    payload_bytes: u64,
) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[0..4].copy_from_slice(&TRAILER_MARK.to_le_bytes());
    out[4..12].copy_from_slice(&frame_count.to_le_bytes());
    out[12..20].copy_from_slice(&payload_bytes.to_le_bytes());
    out[20..24].copy_from_slice(&trailer_crc(header_crc, frame_count, payload_bytes).to_le_bytes());
    out
}

/// Checks a trailer (mark included) against what was read; returns the reason if bad.
pub(super) fn check_trailer(
    header_crc: u32,
    trailer: &[u8; TRAILER_LEN],
    frames: u64,
    payload_bytes: u64,
) -> std::result::Result<(), String> {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&trailer[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let frame_count = u64_at(4);
    let total = u64_at(12);
    let stored = u32::from_le_bytes([trailer[20], trailer[21], trailer[22], trailer[23]]);
    let actual = trailer_crc(header_crc, frame_count, total);
    if stored != actual {
        return Err(format!(
            "trailer checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    if frame_count != frames || total != payload_bytes {
        return Err(format!(
            "trailer records {frame_count} frames / {total} bytes, found {frames} / {payload_bytes}"
        ));
    }
    Ok(())
}
