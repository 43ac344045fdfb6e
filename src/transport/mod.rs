//! The peer transport: carries [`Envelope`]s between nodes over TCP.
//!
//! # Design
//! - **Connections.** Each node dials every peer it sends to and keeps one long-lived
//!   outbound connection per peer (`peer.rs`); it accepts peers' connections on its own
//!   `raft_addr` (`server.rs`). A pair of nodes therefore uses two one-way connections,
//!   so neither side's reads ever wait behind its writes.
//! - **Handshake.** A connection opens with magic, protocol version, cluster id, the
//!   dialer's node id and the id it means to reach ([`codec::Handshake`]); the acceptor
//!   answers with a verdict. Another cluster, a version it does not speak, a node id not
//!   among the acceptor's peers, or the wrong receiver are refused, logged and counted.
//!   The connection's protocol version is the dialer's; a dialer refused for an older
//!   version it also speaks redials in that one ([`Transport::peer_protocol`] tells).
//! - **Frames.** `| len u32 | crc32 u32 | body |` ([`codec`]); the body is
//!   `bincode(Envelope)` in version 1 and `bincode(PeerFrame)` from version 2, which adds
//!   the client writes a follower forwards to the leader and their answers (issue 14;
//!   delivered to [`Transport::take_forward_frames`], not the envelope channel). An oversize
//!   length, a bad CRC or an undecodable body is garbage: the acceptor logs it naming the
//!   peer address, counts it and drops the connection. Nothing a peer sends can make a
//!   node panic or allocate more than the frame size limit allows; the limit is derived
//!   from the largest message the core can send ([`max_frame_bytes_for`]).
//! - **Bounded inbound connections.** One inbound connection per peer id: a newer one
//!   from the same id closes the older (the newest wins: a peer that restarted, or whose
//!   old connection broke without a FIN, dials again). An inbound connection that
//!   delivers nothing for `idle_timeout` is closed; the dialer notices the close at once
//!   and redials. Every peer socket has TCP keepalive on, so a peer host that vanished is
//!   noticed within about `keepalive_idle` plus three probes even on a silent link.
//! - **Sending never blocks.** [`Transport::send`] is a synchronous `try_send` into a
//!   bounded per-peer queue; the peer's task drains it, coalescing everything queued
//!   into one buffer and one `write_all`. A dead or slow peer only fills its own queue:
//!   further messages to it are dropped and counted (Raft tolerates message loss and
//!   retransmits). Messages that arrive while the peer is unreachable (during a
//!   reconnect backoff) are dropped too, so a peer coming back gets fresh messages,
//!   not a backlog of stale ones.
//! - **Reconnects** use exponential backoff (`backoff_min` doubling to `backoff_max`),
//!   reset by every successful handshake. Link changes are logged once per change
//!   (connected, lost, unreachable with a new reason), not once per retry.
//! - **Ordering.** Envelopes to one peer arrive in the order sent, as long as its
//!   connection stays up; across a reconnect some may be lost, never reordered.
//! - **Identity** (issue 16). The handshake's `from` is a claim; the acceptor checks it
//!   before reading any frame. With [`TransportConfig::tls`], the connection is mutual TLS
//!   (`stream.rs`, `crate::security::tls`): the dialer's certificate must chain to the
//!   cluster CA (else the TLS handshake fails, counted in `tls_refused`) and name the
//!   claimed id as `raftlog-node-<id>` (else [`codec::HandshakeStatus::WrongCertificate`]);
//!   the dialer checks the acceptor's certificate names the id it dialed. Without TLS, the
//!   dialer must connect from the IP of the claimed member's `raft_addr`
//!   ([`codec::HandshakeStatus::WrongAddress`]), and dials leave from this node's own
//!   `raft_addr` IP so that the check holds on hosts with several addresses.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use raftlog::transport::{Transport, TransportConfig};
//! let peers = [(2, "127.0.0.1:7002".parse().unwrap())].into_iter().collect();
//! let config = TransportConfig::new(1, "raftlog-demo", "127.0.0.1:7001".parse().unwrap(), peers);
//! let (transport, mut inbound) = Transport::start(config).await?;
//! // transport.send(envelope) for each outgoing message; inbound.recv().await for incoming.
//! # let _ = inbound.recv().await;
//! transport.shutdown().await;
//! # Ok(()) }
//! ```

pub mod codec;
mod peer;
mod server;
mod stream;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::raft::{Envelope, Message, NodeId};

pub use codec::{Forward, ForwardOutcome, ForwardReply, PeerFrame};

/// The forward frames received from peers (`(sender, frame)`), for the node to take with
/// [`Transport::take_forward_frames`]: every frame but Raft envelopes, which keep their
/// own channel.
pub type ForwardFrames = mpsc::Receiver<(NodeId, PeerFrame)>;

/// Settings of one node's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id (positive).
    pub id: NodeId,
    /// Connections from nodes of another cluster are refused.
    pub cluster_id: String,
    /// Where to accept peers' connections (the node's `raft_addr`). Port 0 picks a free
    /// port; [`Transport::local_addr`] tells which.
    pub listen: SocketAddr,
    /// Every peer: where to dial it, and the ids whose connections are accepted. May
    /// include this node's own id, which is ignored. Replace with [`Transport::set_peers`].
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The largest frame body accepted or sent, in bytes. Must be the same on every node
    /// and above the core's `max_msg_bytes` and `snapshot_chunk_bytes` plus overhead.
    pub max_frame_bytes: u32,
    /// Capacity of each peer's outbound queue, in messages. When it is full, further
    /// messages to that peer are dropped and counted.
    pub queue_len: usize,
    /// Capacity of the inbound channel returned by [`Transport::start`]. When it is full,
    /// reading from the connections pauses (TCP back-pressure), nothing is dropped.
    pub inbound_queue_len: usize,
    /// Capacity of the channel of [`Transport::take_forward_frames`]. When it is full,
    /// further forward frames are dropped and counted, rather than Raft's messages
    /// waiting behind client writes.
    pub forward_queue_len: usize,
    /// A write batch stops taking queued messages once it holds this many bytes.
    pub batch_bytes_max: usize,
    /// How long a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How long either side waits for the other's handshake.
    pub handshake_timeout: Duration,
    /// A batch write that takes longer than this declares the connection dead and
    /// redials: it catches peers that vanished without closing the connection (a host
    /// crash, a partition), which TCP itself would notice only after many minutes.
    pub write_timeout: Duration,
    /// First reconnect delay after a failed dial.
    pub backoff_min: Duration,
    /// The reconnect delay doubles up to this.
    pub backoff_max: Duration,
    /// An inbound connection that delivers no frame for this long is closed, so that
    /// sockets of peers that went away without closing them do not accumulate. The
    /// dialer redials at once, so a link that is merely quiet costs one reconnect.
    pub idle_timeout: Duration,
    /// TCP keepalive: the first probe goes out after this much silence, then two more at
    /// a third of it; a peer that answers none is declared dead by the kernel.
    pub keepalive_idle: Duration,
    /// Mutual TLS (issue 16): with it, every connection is TLS, both ends verify the
    /// other's certificate against the cluster CA, and an acceptor takes a handshake's
    /// `from` id only if the dialer's certificate names it. Without it, a peer's id is
    /// vouched for by its source IP alone.
    pub tls: Option<Arc<crate::security::tls::NodeTls>>,
    /// The peer protocol version this node speaks ([`codec::PROTOCOL_VERSION`]); a lower
    /// one (down to [`codec::PROTOCOL_VERSION_MIN`]) makes it behave as an older node
    /// would, which tests use to check that mixed clusters still work.
    pub protocol_version: u16,
}

/// Per-frame slack beyond the payloads: the envelope, the message fields, bincode's
/// length prefixes for each entry, a snapshot's membership. Generous on purpose.
const FRAME_SLACK_BYTES: u64 = 64 << 10;

/// The frame size limit for a core that sends at most `max_msg_bytes` of entries per
/// AppendEntries, `snapshot_chunk_bytes` per InstallSnapshot, and entries of at most
/// `entry_bytes_max` each.
///
/// The largest AppendEntries holds up to `max_msg_bytes` of entries plus the one that
/// crossed the limit (the core always sends at least one entry, however big), hence
/// `max_msg_bytes + entry_bytes_max`. The limit is twice that plus a snapshot chunk: room
/// for a node whose limits were raised to talk to one not yet restarted, while still far
/// below the fixed 64 MiB it replaces (with the defaults, 1 MiB each: about 5.3 MiB), so
/// a garbage length cannot make a node reserve more. Saturates at `u32::MAX`.
pub fn max_frame_bytes_for(
    max_msg_bytes: u64,
    entry_bytes_max: u64,
    snapshot_chunk_bytes: u64,
) -> u32 {
    let largest_append = max_msg_bytes
        .saturating_add(entry_bytes_max)
        .saturating_add(FRAME_SLACK_BYTES);
    let limit = largest_append
        .saturating_mul(2)
        .saturating_add(snapshot_chunk_bytes)
        .saturating_add(FRAME_SLACK_BYTES);
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// [`max_frame_bytes_for`] with the core's and the API's defaults (1 MiB each).
pub const DEFAULT_MESSAGE_BYTES: u64 = 1 << 20;

impl TransportConfig {
    /// Defaults: frames sized for 1 MiB messages, entries and snapshot chunks
    /// ([`max_frame_bytes_for`]), queues of 4096 messages, 1 MiB write batches, 1 s dial
    /// timeout, 5 s handshake timeout, 20 s write timeout, backoff from 10 ms to 1 s,
    /// 2 min inbound idle timeout, keepalive probes after 15 s of silence.
    pub fn new(
        id: NodeId,
        cluster_id: impl Into<String>,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> TransportConfig {
        TransportConfig {
            id,
            cluster_id: cluster_id.into(),
            listen,
            peers,
            max_frame_bytes: max_frame_bytes_for(
                DEFAULT_MESSAGE_BYTES,
                DEFAULT_MESSAGE_BYTES,
                DEFAULT_MESSAGE_BYTES,
            ),
            queue_len: 4096,
            inbound_queue_len: 4096,
            forward_queue_len: 8192,
            batch_bytes_max: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(120),
            keepalive_idle: Duration::from_secs(15),
            tls: None,
            protocol_version: codec::PROTOCOL_VERSION,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid transport config: {what}"),
            ))
        };
        if self.id == 0 {
            return invalid("node id 0 is reserved (\"nobody\"); use a positive id".into());
        }
        if self.cluster_id.len() > codec::CLUSTER_ID_BYTES_MAX {
            return invalid(format!(
                "cluster_id is {} bytes, at most {} allowed",
                self.cluster_id.len(),
                codec::CLUSTER_ID_BYTES_MAX
            ));
        }
        if self.max_frame_bytes < 1024 {
            return invalid(format!(
                "max_frame_bytes {} is below 1024",
                self.max_frame_bytes
            ));
        }
        if self.queue_len == 0 || self.inbound_queue_len == 0 || self.forward_queue_len == 0 {
            return invalid(
                "queue_len, inbound_queue_len and forward_queue_len must be positive".into(),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return invalid(format!(
                "backoff_min {:?} must be positive and at most backoff_max {:?}",
                self.backoff_min, self.backoff_max
            ));
        }
        if self.idle_timeout.is_zero() || self.keepalive_idle < Duration::from_secs(1) {
            return invalid(format!(
                "idle_timeout {:?} must be positive and keepalive_idle {:?} at least 1 s",
                self.idle_timeout, self.keepalive_idle
            ));
        }
        if !(codec::PROTOCOL_VERSION_MIN..=codec::PROTOCOL_VERSION).contains(&self.protocol_version)
        {
            return invalid(format!(
                "protocol_version {} is not one this build speaks ({} to {})",
                self.protocol_version,
                codec::PROTOCOL_VERSION_MIN,
                codec::PROTOCOL_VERSION
            ));
        }
        if let Some(id) = self.peers.keys().find(|id| **id == 0) {
            return invalid(format!("peer id {id} is reserved; use positive ids"));
        }
        Ok(())
    }
}

/// Why [`Transport::send`] did not queue a message. The message is dropped (and
/// counted); Raft recovers by retransmitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// `to` is not a known peer (or is this node itself).
    #[error("no peer {to}: not in the transport's peer set")]
    UnknownPeer {
        /// The intended receiver.
        to: NodeId,
    },
    /// The peer's queue is full: it is slow, unreachable or reconnecting.
    #[error("queue to peer {to} is full; message dropped")]
    QueueFull {
        /// The intended receiver.
        to: NodeId,
    },
    /// The envelope's `from` is not this node: the receiver would refuse it and drop
    /// the whole connection, so it is not sent. A bug in the caller.
    #[error("envelope from node {from} handed to the transport of node {id}")]
    NotFromThisNode {
        /// The envelope's sender.
        from: NodeId,
        /// This node.
        id: NodeId,
    },
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// Counters since start, for `/metrics`. All are monotonic except `peers_connected`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportMetrics {
    /// Frames written to peers.
    pub frames_sent: u64,
    /// Bytes written to peers (headers included).
    pub sent_bytes: u64,
    /// `write_all` calls; `frames_sent / write_batches` is the coalescing factor.
    pub write_batches: u64,
    /// Frames accepted from peers.
    pub frames_received: u64,
    /// Bytes of accepted frames (headers included).
    pub received_bytes: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because the receiver is not a known peer (or the sender is not
    /// this node).
    pub dropped_unknown_peer: u64,
    /// Messages dropped because they arrived while the peer was unreachable.
    pub dropped_disconnected: u64,
    /// Messages lost in a batch whose write failed.
    pub dropped_write_failed: u64,
    /// Messages dropped because they encode to more than `max_frame_bytes`.
    pub dropped_oversize: u64,
    /// InstallSnapshot chunks among the drops above, except write failures (each is
    /// also counted in its own reason's counter, and logged).
    pub dropped_snapshot_chunks: u64,
    /// Failed dials or handshakes (each retry counts).
    pub connect_errors: u64,
    /// Successful outbound handshakes.
    pub connects: u64,
    /// Inbound connections accepted by the listener (before their handshake).
    pub connections_accepted: u64,
    /// Inbound handshakes refused: other cluster, version or receiver, unknown node.
    pub handshakes_refused: u64,
    /// Garbage received: bad handshake, oversize length, bad CRC, undecodable body.
    pub garbage_frames: u64,
    /// Well-formed frames refused: envelope `from`/`to` not matching the handshake.
    pub envelopes_refused: u64,
    /// Inbound connections closed because a newer one from the same peer arrived.
    pub inbound_replaced: u64,
    /// Inbound connections closed after `idle_timeout` without a frame.
    pub inbound_idle_closed: u64,
    /// Peers whose outbound connection is up right now.
    pub peers_connected: u64,
    /// Inbound connections whose TLS handshake failed: no certificate, or one that does not
    /// chain to the cluster CA (issue 16). Refused before any handshake or Raft message.
    pub tls_refused: u64,
    /// When this node's TLS certificate expires (Unix seconds), as of the last (re)load;
    /// `None` without TLS.
    pub tls_cert_not_after_unix: Option<u64>,
    /// Forward frames (client writes for the leader) queued to a peer.
    pub forwards_sent: u64,
    /// Forward and forward-reply frames received but not delivered (no sink, or its queue
    /// full); the follower waiting on one answers "unknown outcome" at its timeout.
    pub forwards_undelivered: u64,
}

/// The live counters behind [`TransportMetrics`].
#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    sent_bytes: AtomicU64,
    write_batches: AtomicU64,
    frames_received: AtomicU64,
    received_bytes: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unknown_peer: AtomicU64,
    dropped_disconnected: AtomicU64,
    dropped_write_failed: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_snapshot_chunks: AtomicU64,
    connect_errors: AtomicU64,
    connects: AtomicU64,
    connections_accepted: AtomicU64,
    handshakes_refused: AtomicU64,
    garbage_frames: AtomicU64,
    envelopes_refused: AtomicU64,
    inbound_replaced: AtomicU64,
    inbound_idle_closed: AtomicU64,
    tls_refused: AtomicU64,
    forwards_sent: AtomicU64,
    forwards_undelivered: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportMetrics {
            frames_sent: get(&self.frames_sent),
            sent_bytes: get(&self.sent_bytes),
            write_batches: get(&self.write_batches),
            frames_received: get(&self.frames_received),
            received_bytes: get(&self.received_bytes),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_unknown_peer: get(&self.dropped_unknown_peer),
            dropped_disconnected: get(&self.dropped_disconnected),
            dropped_write_failed: get(&self.dropped_write_failed),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_snapshot_chunks: get(&self.dropped_snapshot_chunks),
            connect_errors: get(&self.connect_errors),
            connects: get(&self.connects),
            connections_accepted: get(&self.connections_accepted),
            handshakes_refused: get(&self.handshakes_refused),
            garbage_frames: get(&self.garbage_frames),
            envelopes_refused: get(&self.envelopes_refused),
            inbound_replaced: get(&self.inbound_replaced),
            inbound_idle_closed: get(&self.inbound_idle_closed),
            peers_connected: 0,
            tls_refused: get(&self.tls_refused),
            tls_cert_not_after_unix: None,
            forwards_sent: get(&self.forwards_sent),
            forwards_undelivered: get(&self.forwards_undelivered),
        }
    }

    /// Counts a dropped message. Snapshot chunks are big and their loss stalls a
    /// follower's catch-up until the leader retries, so each one is also logged.
    fn dropped(&self, counter: &AtomicU64, frame: &PeerFrame, why: &str) {
        bump(counter, 1);
        let PeerFrame::Raft(env) = frame else {
            return;
        };
        if let Message::InstallSnapshot { offset, data, .. } = &env.message {
            bump(&self.dropped_snapshot_chunks, 1);
            tracing::warn!(
                to = env.to,
                offset,
                chunk_bytes = data.len(),
                "dropped an InstallSnapshot chunk: {why}"
            );
        }
    }
}

/// The peer set as the acceptor sees it. `generation` changes on every update so that
/// open inbound connections notice and re-check their peer.
struct PeerSet {
    addrs: RwLock<BTreeMap<NodeId, SocketAddr>>,
    generation: AtomicU64,
}

impl PeerSet {
    fn contains(&self, id: NodeId) -> bool {
        read_lock(&self.addrs).contains_key(&id)
    }

    /// Whether a connection from `remote` may claim to be member `id`: its IP must be that
    /// of the member's `raft_addr` (issue 16), unless that is unspecified (`0.0.0.0`, which
    /// names no host). Without TLS this is the only proof of identity a peer gives, and it
    /// closes the cheapest attack: any process that knows the (public) cluster id posing
    /// as a member, pushing its term up or having followers apply entries it invented.
    fn source_matches(&self, id: NodeId, remote: SocketAddr) -> bool {
        let Some(member) = read_lock(&self.addrs).get(&id).copied() else {
            return false;
        };
        let canonical = |ip: std::net::IpAddr| ip.to_canonical();
        member.ip().is_unspecified() || canonical(member.ip()) == canonical(remote.ip())
    }
}

/// What every task of one transport shares.
struct Shared {
    id: NodeId,
    cluster_id: String,
    /// The node's `raft_addr`; outbound connections leave from its IP.
    listen: SocketAddr,
    /// Mutual TLS material, re-read on SIGHUP; `None`: plaintext.
    tls: Option<Arc<crate::security::tls::NodeTls>>,
    max_frame_bytes: u32,
    batch_bytes_max: usize,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    write_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    idle_timeout: Duration,
    keepalive_idle: Duration,
    /// The live inbound connection of each peer: its sequence number and the switch that
    /// closes it when a newer one arrives.
    inbound: Mutex<BTreeMap<NodeId, (u64, Arc<Notify>)>>,
    inbound_seq: AtomicU64,
    peers: PeerSet,
    counters: Counters,
    /// Wakes a peer's outbound task out of its reconnect backoff. Poked when that peer
    /// dials us: it is evidently up again, and without the poke a restarted node could
    /// wait up to `backoff_max` to hear from us, long enough to start an election.
    redial: RwLock<BTreeMap<NodeId, Arc<Notify>>>,
    /// Rate limit of the acceptor's refusal warnings.
    refusals: server::RefusalLog,
    /// Test-only fault: drop every envelope in both directions, as a network partition
    /// would, while connections stay up ([`Transport::set_isolated`]).
    isolated: AtomicBool,
    /// The version this node speaks (see [`TransportConfig::protocol_version`]).
    protocol_version: u16,
    /// Where received forward frames go: a channel made at start, so that frames that
    /// arrive before the node takes its end wait for it instead of being dropped.
    forward_sink: mpsc::Sender<(NodeId, PeerFrame)>,
    /// Per peer, how many times a connection to or from it ended. A follower waiting for a
    /// forward's reply compares it with the count when it sent: a change means the
    /// forward or its reply may be lost, so the outcome is unknown.
    link_losses: Mutex<BTreeMap<NodeId, u64>>,
    /// Bumped on every entry of `link_losses`, so waiters wake up to compare.
    link_loss_events: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// Records a new inbound connection from `peer` and closes the one it replaces (the
    /// newest wins). Returns its sequence number and the switch that closes it in turn.
    fn register_inbound(&self, peer: NodeId) -> (u64, Arc<Notify>) {
        let seq = self.inbound_seq.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let replaced = lock(&self.inbound).insert(peer, (seq, Arc::clone(&close)));
        if let Some((_, older)) = replaced {
            // A stored permit: the older connection ends at its next wait even if it is
            // busy delivering right now.
            older.notify_one();
            bump(&self.counters.inbound_replaced, 1);
        }
        (seq, close)
    }

    /// Forgets inbound connection `seq` of `peer`, unless a newer one took its place.
    fn unregister_inbound(&self, peer: NodeId, seq: u64) {
        let mut inbound = lock(&self.inbound);
        if inbound
            .get(&peer)
            .is_some_and(|(current, _)| *current == seq)
        {
            inbound.remove(&peer);
        }
    }

    /// Turns on TCP keepalive, so that a peer host that vanished is noticed on a silent
    /// link: tokio exposes only on/off, socket2 also the timing (std and tokio have no
    /// equivalent; socket2 is the crate tokio itself uses for this).
    fn set_keepalive(&self, stream: &tokio::net::TcpStream) {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(self.keepalive_idle)
            .with_interval(self.keepalive_idle / 3)
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(
                id = self.id,
                "cannot enable TCP keepalive on a peer socket: {e}"
            );
        }
    }

    /// A connection to or from `peer` ended: frames on it may be lost.
    fn link_lost(&self, peer: NodeId) {
        *lock(&self.link_losses).entry(peer).or_insert(0) += 1;
        self.link_loss_events.send_modify(|n| *n += 1);
    }

    /// `peer` just proved it is up: redial it now if we are backing off.
    fn poke_redial(&self, peer: NodeId) {
        if let Some(redial) = read_lock(&self.redial).get(&peer) {
            redial.notify_one();
        }
    }
}

/// One peer's outbound side, as [`Transport::send`] sees it.
struct Outbound {
    addr: SocketAddr,
    queue: mpsc::Sender<PeerFrame>,
    connected: Arc<AtomicBool>,
    /// The protocol version of the live connection; 0 while there is none.
    version: Arc<AtomicU16>,
    /// Frames queued so far, and those the link has written or dropped
    /// ([`Transport::flush`]).
    queued: AtomicU64,
    settled: Arc<AtomicU64>,
    /// Connections to the peer established so far.
    connects: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    queue_len: usize,
    runtime: tokio::runtime::Handle,
    outbound: RwLock<BTreeMap<NodeId, Outbound>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// The receiving end of the forward frames, until the node takes it.
    forward_frames: Mutex<Option<ForwardFrames>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Tasks hold only `Arc<Shared>`, not `Inner`, so this runs when the last
        // `Transport` handle goes, and stops them even without `shutdown()`.
        if let Some(listener) = lock(&self.listener).take() {
            listener.abort();
        }
        for (_, outbound) in std::mem::take(&mut *write_lock(&self.outbound)) {
            outbound.task.abort();
        }
    }
}

/// A node's peer transport. Cheap to clone; all clones drive the same connections.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// One peer's state, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer id.
    pub id: NodeId,
    /// Where it is dialed.
    pub addr: SocketAddr,
    /// Whether the outbound connection is up (handshake accepted).
    pub connected: bool,
    /// Messages waiting in its queue.
    pub queued: usize,
}

impl Transport {
    /// Binds `config.listen`, starts accepting peers and dialing every peer in
    /// `config.peers`. Returns the transport and the channel of envelopes received
    /// (already checked: from a known peer of this cluster, addressed to this node).
    ///
    /// Must be called within a tokio runtime. Fails if the config is invalid or the
    /// address cannot be bound.
    pub async fn start(
        config: TransportConfig,
    ) -> io::Result<(Transport, mpsc::Receiver<Envelope>)> {
        config.validate()?;
        let listener = server::bind(config.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "node {}: cannot listen for peers on {}: {e} (is another node running there?)",
                    config.id, config.listen
                ),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let (forward_sink, forward_frames) = mpsc::channel(config.forward_queue_len);
        let shared = Arc::new(Shared {
            id: config.id,
            cluster_id: config.cluster_id.clone(),
            listen: config.listen,
            tls: config.tls.clone(),
            max_frame_bytes: config.max_frame_bytes,
            batch_bytes_max: config.batch_bytes_max.max(1),
            connect_timeout: config.connect_timeout,
            handshake_timeout: config.handshake_timeout,
            write_timeout: config.write_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            idle_timeout: config.idle_timeout,
            keepalive_idle: config.keepalive_idle,
            inbound: Mutex::new(BTreeMap::new()),
            inbound_seq: AtomicU64::new(0),
            peers: PeerSet {
                addrs: RwLock::new(BTreeMap::new()),
                generation: AtomicU64::new(0),
            },
            counters: Counters::default(),
            redial: RwLock::new(BTreeMap::new()),
            refusals: server::RefusalLog::default(),
            isolated: AtomicBool::new(false),
            protocol_version: config.protocol_version,
            forward_sink,
            link_losses: Mutex::new(BTreeMap::new()),
            link_loss_events: tokio::sync::watch::Sender::new(0),
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue_len);
        let runtime = tokio::runtime::Handle::current();
        let listener_task = runtime.spawn(server::run_listener(
            Arc::clone(&shared),
            listener,
            inbound_tx,
        ));
        let transport = Transport {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                queue_len: config.queue_len,
                runtime,
                outbound: RwLock::new(BTreeMap::new()),
                listener: Mutex::new(Some(listener_task)),
                shut_down: AtomicBool::new(false),
                forward_frames: Mutex::new(Some(forward_frames)),
            }),
        };
        transport.set_peers(config.peers);
        tracing::info!(
            id = config.id,
            addr = %local_addr,
            cluster_id = %config.cluster_id,
            tls = config.tls.is_some(),
            "peer transport listening"
        );
        Ok((transport, inbound_rx))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.shared.id
    }

    /// Queues `env` for `env.to`. Never blocks and never waits for the network: when the
    /// peer's queue is full or the peer is unknown, the message is dropped, counted and
    /// reported in the result, which callers that rely on Raft's retransmission may
    /// ignore.
    pub fn send(&self, env: Envelope) -> Result<(), SendError> {
        let counters = &self.inner.shared.counters;
        let id = self.inner.shared.id;
        let to = env.to;
        let frame = PeerFrame::Raft(env);
        if let PeerFrame::Raft(env) = &frame {
            if env.from != id {
                counters.dropped(&counters.dropped_unknown_peer, &frame, "not from this node");
                return Err(SendError::NotFromThisNode { from: env.from, id });
            }
        }
        self.queue(to, frame)
    }

    /// Queues a [`PeerFrame::Forward`] or [`PeerFrame::ForwardReply`] for `to`, like
    /// [`Transport::send`]. Only for a peer whose [`Transport::peer_protocol`] is at least
    /// [`codec::PROTOCOL_VERSION_FORWARD`]; to an older one it is dropped when written.
    pub fn send_forward(&self, to: NodeId, frame: PeerFrame) -> Result<(), SendError> {
        let is_forward = matches!(frame, PeerFrame::Forward(_));
        self.queue(to, frame)?;
        if is_forward {
            bump(&self.inner.shared.counters.forwards_sent, 1);
        }
        Ok(())
    }

    fn queue(&self, to: NodeId, frame: PeerFrame) -> Result<(), SendError> {
        let counters = &self.inner.shared.counters;
        if self.inner.shared.isolated.load(Ordering::Relaxed) {
            return Ok(());
        }
        let outbound = read_lock(&self.inner.outbound);
        let Some(peer) = outbound.get(&to) else {
            if self.inner.shut_down.load(Ordering::Relaxed) {
                return Err(SendError::Shutdown);
            }
            counters.dropped(&counters.dropped_unknown_peer, &frame, "unknown peer");
            return Err(SendError::UnknownPeer { to });
        };
        match peer.queue.try_send(frame) {
            Ok(()) => {
                peer.queued.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(frame)) => {
                counters.dropped(&counters.dropped_queue_full, &frame, "peer queue full");
                Err(SendError::QueueFull { to })
            }
            // The peer's task ended: only after shutdown or removal of the peer.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Shutdown),
        }
    }

    /// The protocol version of the live connection to `peer`, `None` while there is none.
    pub fn peer_protocol(&self, peer: NodeId) -> Option<u16> {
        let version = read_lock(&self.inner.outbound)
            .get(&peer)?
            .version
            .load(Ordering::Relaxed);
        (version != 0).then_some(version)
    }

    /// The forward frames received from peers, for the node's forward server; those that
    /// arrived before this call (the listener accepts from the start) wait in it. `None`
    /// once taken: there is one receiver.
    pub fn take_forward_frames(&self) -> Option<ForwardFrames> {
        lock(&self.inner.forward_frames).take()
    }

    /// How many connections to `peer` this node has established so far (not counting
    /// those `peer` made to this node). A change means the link now reaches a peer that
    /// may have restarted.
    pub fn peer_connects(&self, peer: NodeId) -> u64 {
        read_lock(&self.inner.outbound)
            .get(&peer)
            .map_or(0, |peer| peer.connects.load(Ordering::SeqCst))
    }

    /// How many times a connection to or from `peer` has ended so far.
    pub fn link_losses(&self, peer: NodeId) -> u64 {
        lock(&self.inner.shared.link_losses)
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }

    /// Changes whenever a connection to or from any peer ends.
    pub fn link_loss_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.link_loss_events.subscribe()
    }

    /// Test-only fault injection: while `isolated`, every envelope to or from a peer is
    /// dropped silently, as a network partition would, so process tests can cut a node
    /// off without root or network namespaces. Enabled by the node only under
    /// `RAFTLOG_TEST_FAULTS=1`.
    pub fn set_isolated(&self, isolated: bool) {
        self.inner
            .shared
            .isolated
            .store(isolated, Ordering::Relaxed);
        tracing::warn!(
            id = self.inner.shared.id,
            isolated,
            "test fault: peer traffic {}",
            if isolated { "dropped" } else { "restored" }
        );
    }

    /// Replaces the peer set: starts dialing new peers, redials peers whose address
    /// changed, stops sending to removed ones, and from now on accepts connections only
    /// from the ids in `peers` (open connections from removed ids are closed when they
    /// next deliver). This node's own id, if present, is ignored.
    pub fn set_peers(&self, mut peers: BTreeMap<NodeId, SocketAddr>) {
        let shared = &self.inner.shared;
        peers.remove(&shared.id);
        peers.remove(&0);
        if self.inner.shut_down.load(Ordering::Relaxed) {
            return;
        }
        *write_lock(&shared.peers.addrs) = peers.clone();
        shared.peers.generation.fetch_add(1, Ordering::Release);

        let mut outbound = write_lock(&self.inner.outbound);
        let mut redial = write_lock(&shared.redial);
        outbound.retain(|id, peer| {
            let keep = peers.get(id) == Some(&peer.addr);
            if !keep {
                peer.task.abort();
                redial.remove(id);
                tracing::info!(peer = id, addr = %peer.addr, "peer removed or moved; closing its connection");
            }
            keep
        });
        for (&id, &addr) in &peers {
            if outbound.contains_key(&id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(self.inner.queue_len);
            let connected = Arc::new(AtomicBool::new(false));
            let version = Arc::new(AtomicU16::new(0));
            let poke = Arc::new(Notify::new());
            let settled = Arc::new(AtomicU64::new(0));
            let connects = Arc::new(AtomicU64::new(0));
            redial.insert(id, Arc::clone(&poke));
            let task = self.inner.runtime.spawn(peer::run(
                Arc::clone(shared),
                peer::Link {
                    peer: id,
                    addr,
                    connected: Arc::clone(&connected),
                    version: Arc::clone(&version),
                    redial: poke,
                    settled: Arc::clone(&settled),
                    connects: Arc::clone(&connects),
                },
                rx,
            ));
            outbound.insert(
                id,
                Outbound {
                    addr,
                    queue,
                    connected,
                    version,
                    queued: AtomicU64::new(0),
                    settled,
                    connects,
                    task,
                },
            );
        }
    }

    /// The current peer set (without this node).
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        read_lock(&self.inner.shared.peers.addrs).clone()
    }

    /// Each peer's link state.
    pub fn peer_statuses(&self) -> Vec<PeerStatus> {
        read_lock(&self.inner.outbound)
            .iter()
            .map(|(&id, peer)| PeerStatus {
                id,
                addr: peer.addr,
                connected: peer.connected.load(Ordering::Relaxed),
                queued: peer.queue.max_capacity() - peer.queue.capacity(),
            })
            .collect()
    }

    /// The counters, read now.
    pub fn metrics(&self) -> TransportMetrics {
        let mut metrics = self.inner.shared.counters.snapshot();
        metrics.peers_connected = read_lock(&self.inner.outbound)
            .values()
            .filter(|peer| peer.connected.load(Ordering::Relaxed))
            .count() as u64;
        metrics.tls_cert_not_after_unix = self
            .inner
            .shared
            .tls
            .as_ref()
            .and_then(|tls| tls.not_after_unix());
        metrics
    }

    /// Waits, for at most `within`, until every frame queued before the call to a peer
    /// that is connected has been written to its connection (or dropped, if the connection
    /// fails meanwhile); the links stay up. A stopping leader calls this before it exits,
    /// so that its last answers to forwarded writes leave while the followers, which see
    /// no link close yet, send it nothing new. Returns whether everything was written in
    /// time.
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        // A peer that is down gets nothing anyway: its link drops what is queued to it.
        let pending: Vec<(u64, Arc<AtomicU64>)> = read_lock(&self.inner.outbound)
            .values()
            .filter(|peer| peer.connected.load(Ordering::Relaxed))
            .map(|peer| {
                (
                    peer.queued.load(Ordering::SeqCst),
                    Arc::clone(&peer.settled),
                )
            })
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if pending
                .iter()
                .all(|(queued, settled)| settled.load(Ordering::SeqCst) >= *queued)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // A batch to a live peer is written within a tick; nothing to wake us sooner.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Stops accepting, closes every connection and ends every task; returns once they
    /// have ended, so the listening port is free again. Later sends fail with
    /// [`SendError::Shutdown`]; the inbound channel ends once the last connection task
    /// has gone. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Relaxed);
        let listener = lock(&self.inner.listener).take();
        let outbound = std::mem::take(&mut *write_lock(&self.inner.outbound));
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(listener) = listener {
            listener.abort();
            tasks.push(listener);
        }
        for (_, peer) in outbound {
            peer.task.abort();
            tasks.push(peer.task);
        }
        for task in tasks {
            // An aborted task reports `JoinError::Cancelled`; a panicked one has
            // already printed its panic. Either way it has ended, which is all we need.
            let _ = task.await;
        }
        tracing::info!(id = self.inner.shared.id, "peer transport shut down");
    }
}

/// Lock helpers: a panic while holding one of these locks leaves plain data (maps of
/// handles) that is still consistent, so poisoning is ignored rather than propagated.
fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
