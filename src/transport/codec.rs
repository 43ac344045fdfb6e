//! Wire format of the peer transport: the connection handshake and the message frames.
//!
//! Everything here is pure (no I/O), so it can be tested exhaustively and fuzzed: the
//! decoders return an error for any input they do not accept and never panic, never
//! allocate more than a small multiple of the bytes they were given.
//!
//! A connection is one-way for data: the dialing node sends a [`Handshake`], the
//! accepting node answers with a [`HandshakeReply`], and from then on only the dialer
//! sends frames, each carrying one bincode-encoded [`Envelope`]. Each node dials every
//! peer it sends to, so a pair of nodes uses two connections.
//!
//! All integers in headers are little-endian.
//!
//! Protocol version 2 adds two frames beside the Raft envelopes (issue 14): a follower
//! sends a client write it cannot serve to the leader as a [`Forward`], and the leader
//! answers with a [`ForwardReply`] on its own connection to the follower. A version 2
//! frame body is a bincode [`PeerFrame`] (a variant tag, then the payload); a version 1
//! body is a bare envelope. The version of a connection is the dialer's, which the
//! acceptor takes if it is one it speaks ([`PROTOCOL_VERSION_MIN`] up to its own), so
//! nodes of both versions keep talking Raft during a rolling upgrade.
//!
//! Protocol version 3 adds a second pair (issue 14, Raft thesis §6.4): a follower asks the
//! leader for a read index with a [`ReadIndexRequest`] and the leader answers with a
//! [`ReadIndexReply`], so that the follower serves linearizable and lease reads from its
//! own state machine. A version 2 peer does not know their tags (it would drop the
//! connection as garbage), so they are sent only on connections of version 3; a dialer
//! refused for version 3 redials in 2, and its follower forwards reads over HTTP as before.

use bincode::error::DecodeError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::{Envelope, NodeId};
use crate::security::Role;
use crate::session::Applied;

/// Opens every handshake: "raftlog peer".
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"RLPR";
/// Opens every handshake reply: "raftlog peer answer".
pub const HANDSHAKE_REPLY_MAGIC: [u8; 4] = *b"RLPA";
/// Bumped whenever the handshake or frame layout, or the encoding of [`Envelope`],
/// changes incompatibly. Nodes refuse a peer speaking another version.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest version this node still speaks: a version 1 peer exchanges Raft envelopes
/// only, and its clients' writes are forwarded over HTTP as before.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// The first version with [`Forward`] and [`ForwardReply`] frames.
pub const PROTOCOL_VERSION_FORWARD: u16 = 2;
/// The first version with [`ReadIndexRequest`] and [`ReadIndexReply`] frames.
pub const PROTOCOL_VERSION_READ_INDEX: u16 = 3;
/// Longest error message a [`ForwardOutcome`] carries; longer ones are cut (on a char
/// boundary) by the sender and refused by the receiver.
pub const FORWARD_MESSAGE_BYTES_MAX: usize = 4096;
/// Fixed part of a handshake, before the cluster id.
pub const HANDSHAKE_FIXED_BYTES: usize = 4 + 2 + 2 + 8 + 8;
/// Longest cluster id a handshake carries; bounds what the acceptor reads before it
/// has checked anything.
pub const CLUSTER_ID_BYTES_MAX: usize = 1024;
/// Size of a handshake reply.
pub const HANDSHAKE_REPLY_BYTES: usize = 4 + 2 + 1 + 1;
/// Size of a frame header.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The largest frame body the length field can express.
pub const FRAME_BYTES_LIMIT: u64 = u32::MAX as u64;

/// The first message on a connection, sent by the dialing node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Protocol version of the sender.
    pub version: u16,
    /// The cluster the sender belongs to; a node refuses peers of another cluster.
    pub cluster_id: String,
    /// The sender's node id; every frame on the connection must be `from` it.
    pub from: NodeId,
    /// The node the sender meant to reach; refused if the acceptor is someone else
    /// (e.g. an address reused by another node after a membership change).
    pub to: NodeId,
}

// handshake = | magic "RLPR" | version u16 | cluster_id_len u16 | from u64 | to u64 |
//             | cluster_id (utf-8, cluster_id_len bytes) | crc32 u32 of everything before |
impl Handshake {
    /// Appends the encoded handshake to `out`. `cluster_id` must be at most
    /// [`CLUSTER_ID_BYTES_MAX`] bytes (checked when the transport starts).
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(
            self.cluster_id.len() <= CLUSTER_ID_BYTES_MAX,
            "cluster id of {} bytes exceeds {CLUSTER_ID_BYTES_MAX}",
            self.cluster_id.len()
        );
        let start = out.len();
        out.extend_from_slice(&HANDSHAKE_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.cluster_id.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        out.extend_from_slice(self.cluster_id.as_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Reads the fixed part of a handshake: checks the magic and returns how many more
    /// bytes (cluster id and CRC) to read before calling [`Handshake::decode`].
    pub fn remaining_len(fixed: &[u8; HANDSHAKE_FIXED_BYTES]) -> Result<usize, HandshakeError> {
        if fixed[0..4] != HANDSHAKE_MAGIC {
            return Err(HandshakeError::BadMagic {
                found: [fixed[0], fixed[1], fixed[2], fixed[3]],
            });
        }
        let cluster_id_len = usize::from(u16::from_le_bytes([fixed[6], fixed[7]]));
        if cluster_id_len > CLUSTER_ID_BYTES_MAX {
            return Err(HandshakeError::ClusterIdTooLong {
                len: cluster_id_len,
            });
        }
        Ok(cluster_id_len + 4)
    }

    /// Decodes a whole handshake: the fixed part followed by the `remaining_len` bytes.
    pub fn decode(buf: &[u8]) -> Result<Handshake, HandshakeError> {
        let fixed: &[u8; HANDSHAKE_FIXED_BYTES] = buf
            .get(..HANDSHAKE_FIXED_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or(HandshakeError::Truncated { len: buf.len() })?;
        let remaining = Handshake::remaining_len(fixed)?;
        if buf.len() != HANDSHAKE_FIXED_BYTES + remaining {
            return Err(HandshakeError::Truncated { len: buf.len() });
        }
        let (covered, crc_bytes) = buf.split_at(buf.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(HandshakeError::BadCrc { stored, computed });
        }
        let cluster_id = std::str::from_utf8(&covered[HANDSHAKE_FIXED_BYTES..])
            .map_err(|_| HandshakeError::ClusterIdNotUtf8)?
            .to_owned();
        Ok(Handshake {
            version: u16::from_le_bytes([buf[4], buf[5]]),
            cluster_id,
            from: u64::from_le_bytes(array8(&buf[8..16])),
            to: u64::from_le_bytes(array8(&buf[16..24])),
        })
    }
}

fn array8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(bytes);
    out
}

/// The acceptor's verdict on a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HandshakeStatus {
    /// Frames may follow.
    Accepted = 0,
    /// The acceptor speaks another protocol version (the reply carries it).
    VersionMismatch = 1,
    /// The dialer belongs to another cluster.
    ClusterMismatch = 2,
    /// The dialer's node id is not among the acceptor's peers.
    UnknownSender = 3,
    /// The acceptor is not the node the dialer meant to reach.
    WrongReceiver = 4,
    /// Without TLS, the dialer connects from an address other than the IP of the
    /// `raft_addr` its claimed id has in the acceptor's membership (issue 16): it may be
    /// a stranger posing as that member.
    WrongAddress = 5,
    /// With TLS, the dialer's certificate does not name the node id its handshake claims
    /// (`raftlog-node-<id>`): a valid member certificate used to pose as another member.
    WrongCertificate = 6,
}

impl HandshakeStatus {
    fn from_u8(byte: u8) -> Option<HandshakeStatus> {
        match byte {
            0 => Some(HandshakeStatus::Accepted),
            1 => Some(HandshakeStatus::VersionMismatch),
            2 => Some(HandshakeStatus::ClusterMismatch),
            3 => Some(HandshakeStatus::UnknownSender),
            4 => Some(HandshakeStatus::WrongReceiver),
            5 => Some(HandshakeStatus::WrongAddress),
            6 => Some(HandshakeStatus::WrongCertificate),
            _ => None,
        }
    }
}

/// The acceptor's answer to a [`Handshake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeReply {
    /// Protocol version of the acceptor.
    pub version: u16,
    /// Whether frames may follow.
    pub status: HandshakeStatus,
}

// reply = | magic "RLPA" | version u16 | status u8 | reserved u8 (0) |
impl HandshakeReply {
    /// The encoded reply.
    pub fn encode(&self) -> [u8; HANDSHAKE_REPLY_BYTES] {
        let v = self.version.to_le_bytes();
        let m = HANDSHAKE_REPLY_MAGIC;
        [m[0], m[1], m[2], m[3], v[0], v[1], self.status as u8, 0]
    }

    /// Decodes a reply.
    pub fn decode(buf: &[u8; HANDSHAKE_REPLY_BYTES]) -> Result<HandshakeReply, HandshakeError> {
        if buf[0..4] != HANDSHAKE_REPLY_MAGIC {
            return Err(HandshakeError::BadMagic {
                found: [buf[0], buf[1], buf[2], buf[3]],
            });
        }
        let status =
            HandshakeStatus::from_u8(buf[6]).ok_or(HandshakeError::BadStatus { byte: buf[6] })?;
        Ok(HandshakeReply {
            version: u16::from_le_bytes([buf[4], buf[5]]),
            status,
        })
    }
}

/// A handshake or reply that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The connection does not start with the raftlog magic: not a raftlog peer.
    #[error("bad magic {found:02x?}: not a raftlog peer connection")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The cluster id is longer than [`CLUSTER_ID_BYTES_MAX`].
    #[error("cluster id length {len} exceeds {CLUSTER_ID_BYTES_MAX} bytes")]
    ClusterIdTooLong {
        /// The length claimed.
        len: usize,
    },
    /// The handshake has the wrong length.
    #[error("truncated handshake ({len} bytes)")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// The checksum does not match: the handshake was corrupted.
    #[error("handshake checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC in the handshake.
        stored: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The cluster id is not UTF-8.
    #[error("cluster id is not UTF-8")]
    ClusterIdNotUtf8,
    /// A reply carries an unknown status byte.
    #[error("unknown handshake status {byte}")]
    BadStatus {
        /// The byte found.
        byte: u8,
    },
}

/// A client write a follower hands to the leader (protocol version 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Chosen by the follower, unique among its forwards in flight; the reply carries it.
    pub request_id: u64,
    /// The client's role as the follower established it; the leader checks that it
    /// permits a write before proposing anything.
    pub role: Role,
    /// The encoded `kv::Command` (session id and all) exactly as the leader proposes it,
    /// so a retry through another node is deduplicated as a retry over HTTP is.
    pub command: Bytes,
    /// How long the leader may wait for the outcome, in milliseconds.
    pub timeout_ms: u64,
}

/// The leader's answer to a [`Forward`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    /// The forward's `request_id`.
    pub request_id: u64,
    /// What came of it.
    pub outcome: ForwardOutcome,
}

/// What came of a forwarded write: enough for the follower to give the client the
/// answer the leader would have given. Each refusal says whether the write may still
/// take effect: only [`ForwardOutcome::Unknown`] leaves that open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// Committed and applied at `index`; `applied` is the session's verdict and the
    /// state machine's response.
    Applied {
        /// The entry's index.
        index: u64,
        /// The verdict.
        applied: Applied,
    },
    /// The receiver does not lead; nothing was proposed.
    NotLeader {
        /// The leader it knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The role does not permit a write; nothing was proposed.
    Forbidden {
        /// The role the forward carried.
        role: Role,
    },
    /// The leader is over one of its bounds; nothing was proposed.
    Overloaded {
        /// Which bound, as the leader words it.
        message: String,
    },
    /// Proposed, but the outcome is not known (timeout): it may or may not take effect.
    Unknown {
        /// The leader's words.
        message: String,
    },
    /// Proposed, but another entry committed at its index: not applied, safe to retry.
    NotCommitted,
    /// The leader is stopping; nothing was proposed.
    Stopped,
    /// The leader is handing over leadership; nothing was proposed.
    TransferInProgress,
    /// The leader's disk is full or its quota reached; nothing was proposed.
    NoSpace {
        /// Which directory and how much space, as the leader words it.
        message: String,
    },
    /// The command is not a client write, or a bug; nothing was applied.
    Invalid {
        /// What was wrong.
        message: String,
    },
}

impl ForwardOutcome {
    /// The message a refusal carries, if any.
    fn message(&self) -> Option<&str> {
        match self {
            ForwardOutcome::Overloaded { message }
            | ForwardOutcome::Unknown { message }
            | ForwardOutcome::NoSpace { message }
            | ForwardOutcome::Invalid { message } => Some(message),
            _ => None,
        }
    }
}

/// Cuts `message` to [`FORWARD_MESSAGE_BYTES_MAX`] bytes on a char boundary, so that an
/// outcome always fits what the receiver accepts.
pub fn bounded_message(mut message: String) -> String {
    if message.len() > FORWARD_MESSAGE_BYTES_MAX {
        let mut cut = FORWARD_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

/// How strong a barrier a follower asks the leader for (protocol version 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// ReadIndex: the leader confirms it still leads with a quorum round.
    Linearizable,
    /// The leader skips the round while its CheckQuorum lease holds.
    Lease,
}

/// A follower's request for a read index (protocol version 3): the index its state
/// machine must reach before it serves a read that started before the request was sent.
/// It carries no key and no role: the leader reveals only an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// Chosen by the follower, unique among its requests in flight; the reply carries it.
    pub request_id: u64,
    /// The barrier to run.
    pub consistency: ReadConsistency,
    /// How long the leader may wait to confirm its leadership, in milliseconds.
    pub timeout_ms: u64,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexReply {
    /// The request's `request_id`.
    pub request_id: u64,
    /// What came of it.
    pub outcome: ReadIndexOutcome,
}

/// What came of a read index request. Nothing is written either way, so every refusal
/// is safe to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexOutcome {
    /// Confirmed: a read served from a state machine that has applied `index` sees every
    /// write acknowledged before the leader received the request.
    Index {
        /// The leader's commit index when it confirmed.
        index: u64,
    },
    /// The receiver does not lead.
    NotLeader {
        /// The leader it knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The leader could not confirm its leadership within the timeout.
    Timeout,
    /// The leader is stopping.
    Stopped,
}

/// One frame of protocol version 2 or later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A Raft message.
    Raft(Envelope),
    /// A client write for the leader.
    Forward(Forward),
    /// The leader's answer to a forward.
    ForwardReply(ForwardReply),
    /// A follower asks for a read index (version 3).
    ReadIndex(ReadIndexRequest),
    /// The leader's answer to a read index request (version 3).
    ReadIndexReply(ReadIndexReply),
}

impl PeerFrame {
    /// The oldest protocol version that has this frame.
    pub fn since_version(&self) -> u16 {
        match self {
            PeerFrame::Raft(_) => PROTOCOL_VERSION_MIN,
            PeerFrame::Forward(_) | PeerFrame::ForwardReply(_) => PROTOCOL_VERSION_FORWARD,
            PeerFrame::ReadIndex(_) | PeerFrame::ReadIndexReply(_) => PROTOCOL_VERSION_READ_INDEX,
        }
    }
}

/// Bincode settings of frame bodies: variable-length integers, little-endian.
fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

// frame = | len u32 | crc32 u32 | bincode(Envelope) (len bytes) |
// `len` counts the body only; the CRC (crc32fast, IEEE) covers the body only. A corrupt
// `len` is caught by the size limit or, failing that, by the CRC of the misframed body.
/// Appends one frame carrying `envelope` to `out`, encoding straight into it (no
/// intermediate buffer). Returns the frame's total size in bytes (header included).
///
/// On error (`envelope` larger than `max_frame_bytes`, which the receiver would refuse),
/// `out` is left as it was.
pub fn encode_frame(
    envelope: &Envelope,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeFrameError> {
    encode_framed(envelope, max_frame_bytes, out)
}

/// Appends `| len | crc | body |` with `body` the bincode of `value`; on error `out` is
/// left as it was. The frame layout of every protocol version.
fn encode_framed<T: serde::Serialize>(
    value: &T,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeFrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    if let Err(e) = bincode::serde::encode_into_std_write(value, out, bincode_config()) {
        out.truncate(start);
        return Err(EncodeFrameError::Encode(e.to_string()));
    }
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    if body_len > max_frame_bytes as usize {
        out.truncate(start);
        return Err(EncodeFrameError::TooLarge {
            len: body_len,
            max: max_frame_bytes,
        });
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_BYTES..]);
    // `body_len <= max_frame_bytes`, a u32, so the cast is exact.
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Why an envelope could not be framed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeFrameError {
    /// The encoded envelope exceeds the frame size limit; the receiver would drop the
    /// connection. Lower the core's `max_msg_bytes`/`snapshot_chunk_bytes` or raise
    /// `max_frame_bytes` on every node.
    #[error("encoded envelope of {len} bytes exceeds max_frame_bytes {max}")]
    TooLarge {
        /// Body size.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// bincode refused the value.
    #[error("bincode encoding failed: {0}")]
    Encode(String),
    /// The frame does not exist in the connection's protocol version (a forward to a
    /// version 1 peer): the caller should have checked the peer's version.
    #[error("this frame does not exist in peer protocol version {version}")]
    NotInVersion {
        /// The connection's version.
        version: u16,
    },
}

/// The header of a frame whose length passed the size check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length.
    pub len: u32,
    /// CRC32 of the body.
    pub crc: u32,
}

impl FrameHeader {
    /// Parses a header and checks the length against `max_frame_bytes` before anyone
    /// allocates room for the body.
    pub fn parse(
        header: &[u8; FRAME_HEADER_BYTES],
        max_frame_bytes: u32,
    ) -> Result<FrameHeader, FrameError> {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: max_frame_bytes,
            });
        }
        Ok(FrameHeader { len, crc })
    }

    /// Header plus body.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.len as usize
    }
}

/// A frame that is garbage. The connection it came on cannot be trusted further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit (or the peer is not speaking this protocol).
    #[error("frame length {len} exceeds max_frame_bytes {max}")]
    TooLarge {
        /// Length claimed.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The body does not match its checksum.
    #[error("frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the body received.
        computed: u32,
    },
    /// The checksum matched but the body is not an envelope (a peer of another
    /// version, or a bug in the sender).
    #[error("frame body of {len} bytes does not decode: {reason}")]
    Undecodable {
        /// Body length.
        len: u32,
        /// bincode's complaint.
        reason: String,
    },
    /// The envelope ends before the body does.
    #[error("frame body of {len} bytes has {trailing} trailing bytes after the envelope")]
    TrailingBytes {
        /// Body length.
        len: u32,
        /// Bytes left over.
        trailing: usize,
    },
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more, then call
/// again; the length has been checked by then, so reserving room for it is safe),
/// `Ok(Some((envelope, frame_len)))` when it does, and `Err` for garbage.
pub fn decode_frame(
    buf: &[u8],
    max_frame_bytes: u32,
) -> Result<Option<(Envelope, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(header, max_frame_bytes)?;
    let Some(body) = buf.get(FRAME_HEADER_BYTES..header.frame_len()) else {
        return Ok(None);
    };
    let envelope = decode_body(&header, body)?;
    Ok(Some((envelope, header.frame_len())))
}

/// The body's CRC against the one its header stored.
fn check_crc(header: &FrameHeader, body: &[u8]) -> Result<(), FrameError> {
    let computed = crc32fast::hash(body);
    if computed != header.crc {
        return Err(FrameError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// A decoded value that must have used the whole body: bytes after it mean a sender that
/// does not speak this protocol.
fn whole_body<T>(
    header: &FrameHeader,
    body: &[u8],
    decoded: Result<(T, usize), String>,
) -> Result<T, FrameError> {
    let (value, used) = decoded.map_err(|reason| FrameError::Undecodable {
        len: header.len,
        reason,
    })?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            len: header.len,
            trailing: body.len() - used,
        });
    }
    Ok(value)
}

/// Checks the CRC of a complete body and decodes the envelope in it.
pub fn decode_body(header: &FrameHeader, body: &[u8]) -> Result<Envelope, FrameError> {
    assert!(
        body.len() == header.len as usize,
        "body of {} bytes for a header claiming {}",
        body.len(),
        header.len
    );
    check_crc(header, body)?;
    let decoded = decode_envelope(body).map_err(|e| e.to_string());
    let envelope = whole_body(header, body, decoded)?;
    Ok(envelope)
}

/// Appends one frame carrying `frame` for a connection of protocol `version`: a bare
/// envelope for version 1 (which has no other frames), a [`PeerFrame`] from version 2.
/// On error `out` is left as it was.
pub fn encode_peer_frame(
    frame: &PeerFrame,
    version: u16,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeFrameError> {
    if version < frame.since_version() {
        return Err(EncodeFrameError::NotInVersion { version });
    }
    if version < PROTOCOL_VERSION_FORWARD {
        return match frame {
            PeerFrame::Raft(envelope) => encode_frame(envelope, max_frame_bytes, out),
            _ => Err(EncodeFrameError::NotInVersion { version }),
        };
    }
    encode_framed(frame, max_frame_bytes, out)
}

/// [`decode_body`] for a connection of protocol `version`.
pub fn decode_peer_body(
    header: &FrameHeader,
    body: &[u8],
    version: u16,
) -> Result<PeerFrame, FrameError> {
    if version < PROTOCOL_VERSION_FORWARD {
        return decode_body(header, body).map(PeerFrame::Raft);
    }
    if body.len() != header.len as usize {
        return Err(FrameError::Undecodable {
            len: header.len,
            reason: format!(
                "{} body bytes for a header claiming {}",
                body.len(),
                header.len
            ),
        });
    }
    check_crc(header, body)?;
    let decoded = decode_limited::<PeerFrame>(body).map_err(|e| e.to_string());
    let frame = whole_body(header, body, decoded)?;
    // A peer of an older version never sends a frame it does not have: one that does is
    // garbage, not something to act on.
    if frame.since_version() > version {
        return Err(FrameError::Undecodable {
            len: header.len,
            reason: format!(
                "a frame of protocol version {} on a connection of version {version}",
                frame.since_version()
            ),
        });
    }
    let message = match &frame {
        PeerFrame::ForwardReply(reply) => reply.outcome.message(),
        _ => None,
    };
    if let Some(message) = message.filter(|m| m.len() > FORWARD_MESSAGE_BYTES_MAX) {
        return Err(FrameError::Undecodable {
            len: header.len,
            reason: format!(
                "forward reply message of {} bytes exceeds {FORWARD_MESSAGE_BYTES_MAX}",
                message.len()
            ),
        });
    }
    Ok(frame)
}

/// [`decode_frame`] for a connection of protocol `version`.
pub fn decode_peer_frame(
    buf: &[u8],
    version: u16,
    max_frame_bytes: u32,
) -> Result<Option<(PeerFrame, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(header, max_frame_bytes)?;
    let Some(body) = buf.get(FRAME_HEADER_BYTES..header.frame_len()) else {
        return Ok(None);
    };
    let frame = decode_peer_body(&header, body, version)?;
    Ok(Some((frame, header.frame_len())))
}

fn decode_envelope(body: &[u8]) -> Result<(Envelope, usize), DecodeError> {
    decode_limited(body)
}

/// Decodes a frame body (an envelope, or a [`PeerFrame`]) with a bincode byte limit
/// scaled to the body.
///
/// Why the limit: bincode decodes a `Bytes`/`String` by allocating the length its prefix
/// claims *before* reading the bytes, so a 20-byte body claiming a 2^60-byte payload
/// would abort the process. With a limit, bincode refuses claims beyond it first. It
/// counts claimed bytes, not wire bytes: every integer claims its full width (a varint
/// `u64` of 1 byte claims 8), so a genuine body claims at most 8x its length. The limit
/// is the smallest power-of-16 tier at or above that, so a forged length can make us
/// allocate at most ~128x the body, which the frame size limit already bounds.
fn decode_limited<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, usize), DecodeError> {
    let claim_bound = (body.len() as u64).saturating_mul(8).saturating_add(64);
    macro_rules! tiers {
        ($($limit:literal),*) => {
            $(
                if claim_bound <= $limit {
                    return bincode::serde::decode_from_slice(
                        body,
                        bincode_config().with_limit::<$limit>(),
                    );
                }
            )*
        };
    }
    tiers!(
        0x1000,         // 4 KiB: votes, heartbeats, responses
        0x1_0000,       // 64 KiB
        0x10_0000,      // 1 MiB
        0x100_0000,     // 16 MiB
        0x1000_0000,    // 256 MiB
        0x1_0000_0000,  // 4 GiB
        0x10_0000_0000  // 64 GiB: above 8x the largest body a u32 length allows
    );
    unreachable!("claim bound {claim_bound} above every tier for a body of u32 length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryKind, Membership, Message, SnapshotMeta};
    use bytes::Bytes;
    use proptest::prelude::*;

    const MAX: u32 = 64 << 20;

    /// One envelope of each shape; the snapshot chunk carries `snapshot_bytes` of data.
    fn sample_envelopes(snapshot_bytes: usize) -> Vec<Envelope> {
        let membership = Membership::single_voter(1, "127.0.0.1:7001", "127.0.0.1:8001");
        let messages = vec![
            Message::PreVote {
                term: 3,
                last_log_index: 10,
                last_log_term: 2,
            },
            Message::RequestVoteResponse {
                term: u64::MAX,
                granted: true,
            },
            Message::AppendEntries {
                term: 7,
                prev_log_index: 100,
                prev_log_term: 6,
                entries: (101..112)
                    .map(|index| Entry {
                        index,
                        term: 7,
                        kind: EntryKind::Normal,
                        payload: Bytes::from(vec![index as u8; index as usize % 17]),
                    })
                    .collect(),
                leader_commit: 99,
                read_ctx: 5,
            },
            Message::InstallSnapshot {
                term: 9,
                meta: SnapshotMeta {
                    last_index: 1000,
                    last_term: 8,
                    membership,
                },
                offset: 1 << 20,
                data: Bytes::from(
                    (0..snapshot_bytes)
                        .map(|i| (i % 251) as u8)
                        .collect::<Vec<u8>>(),
                ),
                done: false,
            },
            Message::TimeoutNow { term: 1 },
        ];
        messages
            .into_iter()
            .enumerate()
            .map(|(i, message)| Envelope {
                from: 1 + i as u64,
                to: 100 + i as u64,
                message,
            })
            .collect()
    }

    fn encode(env: &Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(env, MAX, &mut out).expect("encodes");
        out
    }

    #[test]
    fn frames_round_trip_back_to_back_in_one_buffer() {
        let envelopes = sample_envelopes(1 << 20);
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for env in &envelopes {
            lens.push(encode_frame(env, MAX, &mut buf).expect("encodes"));
        }
        assert_eq!(lens.iter().sum::<usize>(), buf.len());
        let mut at = 0;
        for (env, len) in envelopes.iter().zip(&lens) {
            let (decoded, used) = decode_frame(&buf[at..], MAX)
                .expect("valid")
                .expect("complete");
            assert_eq!(&decoded, env);
            assert_eq!(used, *len);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(decode_frame(&buf[at..], MAX), Ok(None));
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_incomplete() {
        for env in sample_envelopes(1000).iter() {
            let frame = encode(env);
            for cut in 0..frame.len() {
                assert_eq!(decode_frame(&frame[..cut], MAX), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone() {
        let header = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(
            decode_frame(&header, MAX),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: MAX
            })
        );
        // The limit is inclusive: a body of exactly max bytes is fine, one more is not.
        let env = &sample_envelopes(64)[0];
        let frame = encode(env);
        let body_len = (frame.len() - FRAME_HEADER_BYTES) as u32;
        assert!(decode_frame(&frame, body_len)
            .expect("at the limit")
            .is_some());
        assert_eq!(
            decode_frame(&frame, body_len - 1),
            Err(FrameError::TooLarge {
                len: body_len,
                max: body_len - 1
            })
        );
    }

    #[test]
    fn encoder_refuses_an_envelope_over_the_limit_and_leaves_the_buffer_alone() {
        let envelopes = sample_envelopes(2 << 20);
        let snapshot = &envelopes[3];
        let mut out = vec![1, 2, 3];
        let err = encode_frame(snapshot, 1 << 20, &mut out).expect_err("too large");
        assert!(matches!(err, EncodeFrameError::TooLarge { max, .. } if max == 1 << 20));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn flipping_any_bit_of_the_body_is_caught_by_the_crc() {
        let frame = encode(&sample_envelopes(64)[2]);
        for byte in FRAME_HEADER_BYTES..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(decode_frame(&bad, MAX), Err(FrameError::BadCrc { .. })),
                    "flip of byte {byte} bit {bit} not caught"
                );
            }
        }
    }

    /// A frame whose CRC is right but whose body claims a gigantic payload: bincode
    /// would try to allocate it (and abort the process) without the decode limit.
    #[test]
    fn forged_payload_length_with_valid_crc_is_undecodable_not_an_allocation() {
        let env = Envelope {
            from: 1,
            to: 2,
            message: Message::InstallSnapshot {
                term: 1,
                meta: SnapshotMeta::default(),
                offset: 0,
                data: Bytes::from_static(b"abcd"),
                done: true,
            },
        };
        let body = bincode::serde::encode_to_vec(&env, bincode_config()).expect("encodes");
        // The data length (4) is the varint just before the 4 data bytes; replace it with
        // a u64 varint (tag 253) claiming 2^60 bytes.
        let at = body.len() - 1 /* done */ - 4 /* data */ - 1 /* len */;
        assert_eq!(body[at], 4, "layout assumption: 1-byte varint length");
        let mut forged = body[..at].to_vec();
        forged.push(253);
        forged.extend_from_slice(&(1u64 << 60).to_le_bytes());
        forged.extend_from_slice(&body[at + 1..]);
        let mut frame = (forged.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&forged).to_le_bytes());
        frame.extend_from_slice(&forged);
        assert!(matches!(
            decode_frame(&frame, MAX),
            Err(FrameError::Undecodable { .. })
        ));
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_garbage() {
        let env = &sample_envelopes(64)[0];
        let mut body = bincode::serde::encode_to_vec(env, bincode_config()).expect("encodes");
        body.extend_from_slice(&[0, 0]);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(
            decode_frame(&frame, MAX),
            Err(FrameError::TrailingBytes {
                len: body.len() as u32,
                trailing: 2
            })
        );
    }

    #[test]
    fn handshake_round_trips_and_refuses_corruption() {
        let hs = Handshake {
            version: PROTOCOL_VERSION,
            cluster_id: "raftlog-demo".into(),
            from: 3,
            to: u64::MAX,
        };
        let mut buf = Vec::new();
        hs.encode(&mut buf);
        let fixed: &[u8; HANDSHAKE_FIXED_BYTES] = buf[..HANDSHAKE_FIXED_BYTES].try_into().unwrap();
        assert_eq!(
            Handshake::remaining_len(fixed),
            Ok(buf.len() - HANDSHAKE_FIXED_BYTES)
        );
        assert_eq!(Handshake::decode(&buf), Ok(hs));
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(
                Handshake::decode(&bad).is_err(),
                "flip of byte {byte} accepted"
            );
        }
        assert!(Handshake::decode(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn handshake_reply_round_trips_for_every_status() {
        for status in [
            HandshakeStatus::Accepted,
            HandshakeStatus::VersionMismatch,
            HandshakeStatus::ClusterMismatch,
            HandshakeStatus::UnknownSender,
            HandshakeStatus::WrongReceiver,
        ] {
            let reply = HandshakeReply { version: 7, status };
            assert_eq!(HandshakeReply::decode(&reply.encode()), Ok(reply));
        }
        let mut bad = HandshakeReply {
            version: 1,
            status: HandshakeStatus::Accepted,
        }
        .encode();
        bad[6] = 99;
        assert_eq!(
            HandshakeReply::decode(&bad),
            Err(HandshakeError::BadStatus { byte: 99 })
        );
    }

    /// Exhaustive over short inputs: every 1- and 2-byte body behind a valid header
    /// (so the CRC check passes and bincode sees the bytes).
    #[test]
    fn decode_never_panics_on_any_short_body() {
        for len in 0..=2usize {
            for n in 0..(1u32 << (8 * len)) {
                let body = &n.to_le_bytes()[..len];
                let mut frame = (len as u32).to_le_bytes().to_vec();
                frame.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
                frame.extend_from_slice(body);
                let _ = decode_frame(&frame, MAX);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes, raw: mostly oversize lengths and bad CRCs.
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes, MAX);
            let _ = Handshake::decode(&bytes);
            if let Some(fixed) = bytes.first_chunk::<HANDSHAKE_FIXED_BYTES>() {
                let _ = Handshake::remaining_len(fixed);
            }
            if let Some(reply) = bytes.first_chunk::<HANDSHAKE_REPLY_BYTES>() {
                let _ = HandshakeReply::decode(reply);
            }
        }

        /// Arbitrary bodies behind a correct header and CRC, so bincode itself is fuzzed.
        #[test]
        fn decode_never_panics_on_arbitrary_bodies_with_valid_crc(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_frame(&frame, MAX);
        }

        /// Valid frames with a few bytes overwritten: near-misses reach deeper decoder paths.
        #[test]
        fn decode_never_panics_on_mutated_valid_bodies(
            which in 0usize..5,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let envs = sample_envelopes(100);
            let env = &envs[which];
            let mut body = bincode::serde::encode_to_vec(env, bincode_config()).expect("encodes");
            for (at, value) in edits {
                let i = at % body.len();
                body[i] = value;
            }
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_frame(&frame, MAX);
        }

        #[test]
        fn peer_frame_decoding_never_panics_on_arbitrary_bodies_with_valid_crc(
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let header = FrameHeader { len: body.len() as u32, crc: crc32fast::hash(&body) };
            if let Ok(frame) = decode_peer_body(&header, &body, PROTOCOL_VERSION) {
                let mut out = Vec::new();
                encode_peer_frame(&frame, PROTOCOL_VERSION, MAX, &mut out).expect("re-encodes");
                prop_assert_eq!(decode_peer_frame(&out, PROTOCOL_VERSION, MAX), Ok(Some((frame, out.len()))));
            }
        }

        #[test]
        fn peer_frame_decoding_never_panics_on_mutated_forward_frames(
            pick in 0usize..64,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let frames = sample_peer_frames();
            let frame = &frames[pick % frames.len()];
            let mut body = bincode::serde::encode_to_vec(frame, bincode_config()).expect("encodes");
            for (at, value) in edits {
                let i = at % body.len();
                body[i] = value;
            }
            let header = FrameHeader { len: body.len() as u32, crc: crc32fast::hash(&body) };
            let _ = decode_peer_body(&header, &body, PROTOCOL_VERSION);
        }
    }

    /// One frame of each kind protocol version 2 adds, with every outcome.
    fn sample_peer_frames() -> Vec<PeerFrame> {
        use crate::session::Applied;
        let outcomes = vec![
            ForwardOutcome::Applied {
                index: 42,
                applied: Applied::Fresh(b"ok".to_vec()),
            },
            ForwardOutcome::Applied {
                index: u64::MAX,
                applied: Applied::Duplicate {
                    response: vec![0; 100],
                    index: 7,
                },
            },
            ForwardOutcome::Applied {
                index: 1,
                applied: Applied::Reused { index: 3 },
            },
            ForwardOutcome::NotLeader {
                leader_hint: Some(3),
            },
            ForwardOutcome::NotLeader { leader_hint: None },
            ForwardOutcome::Forbidden { role: Role::Read },
            ForwardOutcome::Overloaded {
                message: "request queue full".into(),
            },
            ForwardOutcome::Unknown {
                message: "timed out".into(),
            },
            ForwardOutcome::NotCommitted,
            ForwardOutcome::Stopped,
            ForwardOutcome::TransferInProgress,
            ForwardOutcome::NoSpace {
                message: "disk full ✓".into(),
            },
            ForwardOutcome::Invalid {
                message: String::new(),
            },
        ];
        let mut frames = vec![PeerFrame::Forward(Forward {
            request_id: 9,
            role: Role::Admin,
            command: Bytes::from_static(b"an encoded command"),
            timeout_ms: 5000,
        })];
        frames.extend(outcomes.into_iter().enumerate().map(|(i, outcome)| {
            PeerFrame::ForwardReply(ForwardReply {
                request_id: i as u64,
                outcome,
            })
        }));
        frames.extend(sample_read_index_frames());
        frames.extend(sample_envelopes(64).into_iter().map(PeerFrame::Raft));
        frames
    }

    /// One frame of each kind protocol version 3 adds, with every outcome.
    fn sample_read_index_frames() -> Vec<PeerFrame> {
        let mut frames = vec![
            PeerFrame::ReadIndex(ReadIndexRequest {
                request_id: 0,
                consistency: ReadConsistency::Linearizable,
                timeout_ms: 5000,
            }),
            PeerFrame::ReadIndex(ReadIndexRequest {
                request_id: u64::MAX,
                consistency: ReadConsistency::Lease,
                timeout_ms: 0,
            }),
        ];
        let outcomes = [
            ReadIndexOutcome::Index { index: 0 },
            ReadIndexOutcome::Index { index: u64::MAX },
            ReadIndexOutcome::NotLeader {
                leader_hint: Some(2),
            },
            ReadIndexOutcome::NotLeader { leader_hint: None },
            ReadIndexOutcome::Timeout,
            ReadIndexOutcome::Stopped,
        ];
        frames.extend(outcomes.into_iter().enumerate().map(|(i, outcome)| {
            PeerFrame::ReadIndexReply(ReadIndexReply {
                request_id: i as u64,
                outcome,
            })
        }));
        frames
    }

    #[test]
    fn read_index_frames_exist_only_on_version_3_connections() {
        for frame in sample_read_index_frames() {
            let mut v3 = Vec::new();
            encode_peer_frame(&frame, PROTOCOL_VERSION_READ_INDEX, MAX, &mut v3).expect("encodes");
            assert_eq!(
                decode_peer_frame(&v3, PROTOCOL_VERSION_READ_INDEX, MAX),
                Ok(Some((frame.clone(), v3.len())))
            );
            for version in [1, 2] {
                let mut buf = vec![7];
                assert_eq!(
                    encode_peer_frame(&frame, version, MAX, &mut buf),
                    Err(EncodeFrameError::NotInVersion { version }),
                    "{frame:?} encoded for version {version}"
                );
                assert_eq!(buf, [7], "a refused frame leaves the buffer alone");
            }
            // A version 2 peer never sends one: on its connection it is garbage.
            let header = FrameHeader {
                len: (v3.len() - FRAME_HEADER_BYTES) as u32,
                crc: crc32fast::hash(&v3[FRAME_HEADER_BYTES..]),
            };
            assert!(matches!(
                decode_peer_body(&header, &v3[FRAME_HEADER_BYTES..], 2),
                Err(FrameError::Undecodable { .. })
            ));
        }
        // Version 2's frames keep their tags, so a version 2 peer reads what it always read.
        let forward = &sample_peer_frames()[0];
        let mut v2 = Vec::new();
        encode_peer_frame(forward, 2, MAX, &mut v2).expect("encodes");
        let mut v3 = Vec::new();
        encode_peer_frame(forward, PROTOCOL_VERSION, MAX, &mut v3).expect("encodes");
        assert_eq!(v2, v3);
        assert_eq!(
            decode_peer_frame(&v2, 2, MAX),
            Ok(Some((forward.clone(), v2.len())))
        );
    }

    #[test]
    fn every_version_2_frame_round_trips_back_to_back_in_one_buffer() {
        let frames = sample_peer_frames();
        let mut buf = Vec::new();
        for frame in &frames {
            encode_peer_frame(frame, PROTOCOL_VERSION, MAX, &mut buf).expect("encodes");
        }
        let mut at = 0;
        for frame in &frames {
            let (decoded, len) = decode_peer_frame(&buf[at..], PROTOCOL_VERSION, MAX)
                .expect("decodes")
                .expect("complete");
            assert_eq!(&decoded, frame);
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn every_strict_prefix_of_a_forward_frame_is_incomplete_not_garbage() {
        for frame in sample_peer_frames()
            .iter()
            .filter(|frame| !matches!(frame, PeerFrame::Raft(_)))
        {
            let mut buf = Vec::new();
            encode_peer_frame(frame, PROTOCOL_VERSION, MAX, &mut buf).expect("encodes");
            for cut in 0..buf.len() {
                assert_eq!(
                    decode_peer_frame(&buf[..cut], PROTOCOL_VERSION, MAX),
                    Ok(None),
                    "prefix of {cut} bytes of {frame:?}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_forward_body_with_a_matching_crc_is_undecodable() {
        for frame in sample_peer_frames()
            .iter()
            .filter(|frame| !matches!(frame, PeerFrame::Raft(_)))
        {
            let body = bincode::serde::encode_to_vec(frame, bincode_config()).expect("encodes");
            for cut in 0..body.len() {
                let short = &body[..cut];
                let header = FrameHeader {
                    len: cut as u32,
                    crc: crc32fast::hash(short),
                };
                assert!(
                    decode_peer_body(&header, short, PROTOCOL_VERSION).is_err(),
                    "{cut} bytes of {frame:?} decoded"
                );
            }
        }
    }

    #[test]
    fn version_1_connections_carry_raft_envelopes_only_in_the_old_layout() {
        let env = sample_envelopes(16).remove(0);
        let mut old = Vec::new();
        encode_frame(&env, MAX, &mut old).expect("encodes");
        let mut v1 = Vec::new();
        encode_peer_frame(&PeerFrame::Raft(env.clone()), 1, MAX, &mut v1).expect("encodes");
        assert_eq!(v1, old, "a version 1 peer must read what it always read");
        assert_eq!(
            decode_peer_frame(&v1, 1, MAX),
            Ok(Some((PeerFrame::Raft(env), v1.len())))
        );
        let forward = &sample_peer_frames()[0];
        let mut buf = vec![7];
        assert_eq!(
            encode_peer_frame(forward, 1, MAX, &mut buf),
            Err(EncodeFrameError::NotInVersion { version: 1 })
        );
        assert_eq!(buf, [7], "a refused frame leaves the buffer alone");
    }

    #[test]
    fn garbage_in_a_version_2_frame_is_refused() {
        // An unknown frame tag.
        let body = [200u8, 1, 2, 3];
        let header = FrameHeader {
            len: 4,
            crc: crc32fast::hash(&body),
        };
        assert!(matches!(
            decode_peer_body(&header, &body, PROTOCOL_VERSION),
            Err(FrameError::Undecodable { .. })
        ));
        // A forward claiming a command of 2^60 bytes in a 20-byte body.
        let mut body = vec![1u8, 9, 2]; // Forward, request_id 9, role Admin
        body.push(0xFD);
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        let header = FrameHeader {
            len: body.len() as u32,
            crc: crc32fast::hash(&body),
        };
        assert!(decode_peer_body(&header, &body, PROTOCOL_VERSION).is_err());
        // A reply whose message is longer than any sender writes.
        let reply = PeerFrame::ForwardReply(ForwardReply {
            request_id: 1,
            outcome: ForwardOutcome::Unknown {
                message: "x".repeat(FORWARD_MESSAGE_BYTES_MAX + 1),
            },
        });
        let body = bincode::serde::encode_to_vec(&reply, bincode_config()).expect("encodes");
        let header = FrameHeader {
            len: body.len() as u32,
            crc: crc32fast::hash(&body),
        };
        assert!(decode_peer_body(&header, &body, PROTOCOL_VERSION).is_err());
        // A flipped bit anywhere is caught by the CRC.
        let mut buf = Vec::new();
        encode_peer_frame(&sample_peer_frames()[0], PROTOCOL_VERSION, MAX, &mut buf)
            .expect("encodes");
        buf[FRAME_HEADER_BYTES + 3] ^= 0x10;
        assert!(matches!(
            decode_peer_frame(&buf, PROTOCOL_VERSION, MAX),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn bounded_messages_fit_the_receiver_and_cut_on_a_char_boundary() {
        let long = "é".repeat(FORWARD_MESSAGE_BYTES_MAX);
        let cut = bounded_message(long);
        assert!(
            cut.len() <= FORWARD_MESSAGE_BYTES_MAX && cut.len() + 2 > FORWARD_MESSAGE_BYTES_MAX
        );
        assert_eq!(bounded_message("short".into()), "short");
    }
}
