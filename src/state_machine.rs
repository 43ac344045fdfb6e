//! The [`StateMachine`] trait a raftlog node drives, and the byte helpers snapshot encoders
//! share.
//!
//! A snapshot is a stream: every item is read with a length prefix, and a length is never
//! trusted with an up-front allocation. The bytes of an item are pulled in as they arrive
//! (a damaged length runs into the end of the stream and fails there), so restore accepts
//! any item the writer could write without a separate per-item cap that could disagree
//! with what the apply path lets into the state (issue 11).

use std::io::{self, Read, Write};

/// A deterministic state machine driven by the Raft log.
///
/// # To ensure correctness
/// - `apply` must be deterministic: the same commands in the same order give the same
///   state and responses on every node.
/// - `snapshot` must capture the state as of the last applied command, and the view it
///   returns must not change while later commands are applied (it is written by another
///   thread while `apply` carries on).
/// - `session_record` and `session_response` must be deterministic functions of the state
///   and their arguments: the session table built from them is replicated state.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies a committed command at `index` and returns the response for the client.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;

    /// A frozen point-in-time view that can be written out on another thread.
    fn snapshot(&self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with the one read from `reader` (written by `snapshot`).
    fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()>;

    /// What the client session table keeps of `response`, just after `command` produced it
    /// (`None`: the command is not known, as for sessions read from an old snapshot), so a
    /// retry can be answered with the same outcome. The record counts against the table's
    /// byte budget, so a state machine whose responses repeat large parts of its state
    /// should keep a reference it can resolve later instead. Default: the response itself.
    fn session_record(&self, command: Option<&[u8]>, response: &[u8]) -> Vec<u8> {
        let _ = command;
        response.to_vec()
    }

    /// The response a record from [`StateMachine::session_record`] stands for, rebuilt from
    /// the current state; `None` when it can no longer be rebuilt exactly (the retry is then
    /// refused as expired rather than answered differently). Default: the record itself.
    fn session_response(&self, record: &[u8]) -> Option<Vec<u8>> {
        Some(record.to_vec())
    }
}

/// A frozen state machine view being written as a snapshot.
pub trait SnapshotSource: Send {
    /// Streams the view to `writer`.
    fn write_to(&self, writer: &mut dyn Write) -> io::Result<()>;
}

pub(crate) fn read_u8(reader: &mut dyn Read) -> io::Result<u8> {
    let mut buf = [0u8; 1];
    reader.read_exact(&mut buf)?;
    Ok(buf[0])
}

pub(crate) fn read_u32(reader: &mut dyn Read) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

pub(crate) fn read_u64(reader: &mut dyn Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    reader.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

/// Reads exactly `len` bytes, growing the buffer only as bytes arrive: a garbage length from
/// a damaged stream ends in `UnexpectedEof` instead of a huge allocation, and a genuine item
/// of any size is accepted.
pub(crate) fn read_exactly(reader: &mut dyn Read, len: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(1 << 20) as usize);
    reader.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "snapshot stream ends inside {what}: {} of {len} bytes present",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

/// Writes `| len u64 | bytes |`.
pub(crate) fn write_len_prefixed(writer: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(&(bytes.len() as u64).to_le_bytes())?;
    writer.write_all(bytes)
}

/// Reads what [`write_len_prefixed`] wrote.
pub(crate) fn read_len_prefixed(reader: &mut dyn Read, what: &str) -> io::Result<Vec<u8>> {
    let len = read_u64(reader)?;
    read_exactly(reader, len, what)
}

pub(crate) fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}
