//! The outbound side: one task per peer that dials it, handshakes, and drains the
//! peer's queue onto the connection in coalesced batches.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};

use super::codec::{
    self, Handshake, HandshakeError, HandshakeReply, HandshakeStatus, PeerFrame,
    HANDSHAKE_REPLY_BYTES, PROTOCOL_VERSION_MIN,
};
use super::stream::PeerStream;
use super::{bump, Shared};
use crate::coalesce::Coalescer;
use crate::raft::NodeId;

/// Why a dial did not produce a usable connection.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake I/O failed: {0}")]
    HandshakeIo(std::io::Error),
    #[error(
        "TLS handshake failed: {0} (does its certificate chain to our tls.ca and name the node \
         we dialed as raftlog-node-<id>?)"
    )]
    Tls(std::io::Error),
    #[error("no handshake reply within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("bad handshake reply: {0}")]
    BadReply(HandshakeError),
    #[error("refused by the peer: {reason} (peer protocol version {version})")]
    Refused { reason: &'static str, version: u16 },
}

impl ConnectError {
    /// Failures that repeat with the same key are logged once, not on every retry.
    fn log_key(&self) -> String {
        match self {
            ConnectError::Connect(e) | ConnectError::HandshakeIo(e) => format!("io:{:?}", e.kind()),
            ConnectError::ConnectTimeout(_) => "connect-timeout".into(),
            ConnectError::HandshakeTimeout(_) => "handshake-timeout".into(),
            ConnectError::BadReply(_) => "bad-reply".into(),
            ConnectError::Tls(e) => format!("tls:{e}"),
            ConnectError::Refused { reason, .. } => format!("refused:{reason}"),
        }
    }

    /// A refusal or a non-raftlog peer means misconfiguration, not a node that is down.
    fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            ConnectError::BadReply(_) | ConnectError::Refused { .. } | ConnectError::Tls(_)
        )
    }
}

/// How a connected stretch ended.
enum Ended {
    /// The queue closed: the transport is shutting down or the peer was removed.
    QueueClosed,
    /// The connection failed; redial.
    Lost(String),
}

/// Which peer an outbound task serves, and its handles shared with the transport.
pub(super) struct Link {
    /// The peer's id.
    pub peer: NodeId,
    /// Where to dial it.
    pub addr: SocketAddr,
    /// Set while the connection is up (handshake accepted).
    pub connected: Arc<AtomicBool>,
    /// The connection's protocol version while it is up, else 0.
    pub version: Arc<AtomicU16>,
    /// Notified when the peer dialed us: cut the backoff short.
    pub redial: Arc<Notify>,
    /// Frames taken from the queue and written or dropped ([`super::Transport::flush`]).
    pub settled: Arc<AtomicU64>,
    /// Connections to the peer established so far ([`super::Transport::peer_connects`]).
    pub connects: Arc<AtomicU64>,
}

/// Runs until the peer's queue closes (transport dropped) or the task is aborted
/// (shutdown, peer removed or moved).
pub(super) async fn run(shared: Arc<Shared>, link: Link, queue: mpsc::Receiver<PeerFrame>) {
    let Link {
        peer,
        addr,
        connected,
        version,
        redial,
        settled,
        connects,
    } = link;
    let mut queue = Outgoing { queue, settled };
    let mut backoff = shared.backoff_min;
    // The last failure logged, so a peer that stays down is reported once.
    let mut last_logged: Option<String> = None;
    // Reused for every batch: no allocation per message or per write in steady state.
    let mut buf: Vec<u8> = Vec::with_capacity(shared.batch_bytes_max.min(1 << 20) + 4096);
    loop {
        match connect_negotiating(&shared, peer, addr).await {
            Ok((stream, spoken)) => {
                bump(&shared.counters.connects, 1);
                connects.fetch_add(1, Ordering::SeqCst);
                version.store(spoken, Ordering::Relaxed);
                connected.store(true, Ordering::Relaxed);
                tracing::info!(id = shared.id, peer, %addr, version = spoken, "peer connected");
                backoff = shared.backoff_min;
                last_logged = None;
                let ended = pump(&shared, peer, addr, stream, spoken, &mut queue, &mut buf).await;
                connected.store(false, Ordering::Relaxed);
                version.store(0, Ordering::Relaxed);
                shared.link_lost(peer);
                match ended {
                    Ended::QueueClosed => return,
                    Ended::Lost(why) => {
                        // A poke from while the link was up is stale: only one that
                        // comes during the coming backoff says the peer is back.
                        discard_poke(&redial);
                        tracing::info!(id = shared.id, peer, %addr, "peer connection lost ({why}); reconnecting");
                        // Redial at once: a single lost connection is usually a restart.
                        continue;
                    }
                }
            }
            Err(e) => {
                bump(&shared.counters.connect_errors, 1);
                let key = e.log_key();
                if last_logged.as_deref() != Some(key.as_str()) {
                    if e.is_misconfiguration() {
                        tracing::warn!(id = shared.id, peer, %addr, "cannot reach peer: {e}; retrying with backoff up to {:?}", shared.backoff_max);
                    } else {
                        tracing::info!(id = shared.id, peer, %addr, "peer unreachable: {e}; retrying with backoff up to {:?}", shared.backoff_max);
                    }
                    last_logged = Some(key);
                } else {
                    tracing::debug!(id = shared.id, peer, %addr, "peer still unreachable: {e}");
                }
            }
        }
        match drop_during(&shared, &mut queue, &redial, backoff).await {
            Backoff::Elapsed => backoff = (backoff * 2).min(shared.backoff_max),
            Backoff::Poked => {
                tracing::debug!(id = shared.id, peer, %addr, "peer dialed us; redialing it now");
                backoff = shared.backoff_min;
            }
            Backoff::QueueClosed => return,
        }
    }
}

/// Consumes a pending poke, if any.
fn discard_poke(redial: &Notify) {
    let pending = redial.notified();
    tokio::pin!(pending);
    // `enable` takes a stored permit if there is one; the future is then dropped.
    pending.as_mut().enable();
}

/// How a backoff ended.
enum Backoff {
    Elapsed,
    /// The peer dialed us, so it is up: redial at once.
    Poked,
    QueueClosed,
}

/// A peer's outbound queue, and the count of frames taken from it that have been written
/// or dropped, which [`super::Transport::flush`] waits on.
struct Outgoing {
    queue: mpsc::Receiver<PeerFrame>,
    settled: Arc<AtomicU64>,
}

impl Outgoing {
    async fn recv(&mut self) -> Option<PeerFrame> {
        self.queue.recv().await
    }

    fn try_recv(&mut self) -> Option<PeerFrame> {
        self.queue.try_recv().ok()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `frames` taken earlier were written or dropped.
    fn settle(&self, frames: u64) {
        self.settled.fetch_add(frames, Ordering::SeqCst);
    }
}

/// Sleeps for `backoff`, dropping (and counting) whatever is queued meanwhile, so the
/// peer gets fresh messages when it comes back rather than a stale backlog.
async fn drop_during(
    shared: &Shared,
    queue: &mut Outgoing,
    redial: &Notify,
    backoff: Duration,
) -> Backoff {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return Backoff::Elapsed,
            _ = redial.notified() => return Backoff::Poked,
            env = queue.recv() => match env {
                Some(env) => {
                    shared.counters.dropped(&shared.counters.dropped_disconnected, &env, "peer unreachable");
                    queue.settle(1);
                }
                None => return Backoff::QueueClosed,
            },
        }
    }
}

/// Dials `addr` in this node's protocol version; if the peer refuses it for an older
/// version this node also speaks (a node not yet upgraded), dials again in that one.
/// Returns the stream and the connection's version.
async fn connect_negotiating(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(PeerStream, u16), ConnectError> {
    match connect(shared, peer, addr, shared.protocol_version).await {
        Err(ConnectError::Refused {
            reason: VERSION_MISMATCH,
            version,
        }) if (PROTOCOL_VERSION_MIN..shared.protocol_version).contains(&version) => {
            tracing::debug!(id = shared.id, peer, %addr, version, "peer speaks an older protocol; dialing again in it");
            let stream = connect(shared, peer, addr, version).await?;
            Ok((stream, version))
        }
        other => other.map(|stream| (stream, shared.protocol_version)),
    }
}

const VERSION_MISMATCH: &str = "protocol version mismatch";

/// Dials `addr` and performs the handshake in protocol `version`.
async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
    version: u16,
) -> Result<PeerStream, ConnectError> {
    let stream =
        match tokio::time::timeout(shared.connect_timeout, dial(shared.listen.ip(), addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ConnectError::Connect(e)),
            Err(_) => return Err(ConnectError::ConnectTimeout(shared.connect_timeout)),
        };
    // Batching happens above TCP (one write per drained queue); Nagle would only add
    // latency to the heartbeat and vote messages Raft's timing depends on.
    stream
        .set_nodelay(true)
        .map_err(ConnectError::HandshakeIo)?;
    shared.set_keepalive(&stream);
    let mut stream: PeerStream = match &shared.tls {
        None => Box::new(stream),
        Some(tls) => {
            // The acceptor's certificate must name the node we mean to reach, so a stale
            // address that now belongs to another member (or a stranger) is not trusted.
            let name = rustls::pki_types::ServerName::try_from(crate::security::node_name(peer))
                .map_err(|e| {
                    ConnectError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?;
            match tokio::time::timeout(
                shared.handshake_timeout,
                tls.peer_connector().connect(name, stream),
            )
            .await
            {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => return Err(ConnectError::Tls(e)),
                Err(_) => return Err(ConnectError::HandshakeTimeout(shared.handshake_timeout)),
            }
        }
    };
    let mut hello = Vec::with_capacity(codec::HANDSHAKE_FIXED_BYTES + shared.cluster_id.len() + 4);
    Handshake {
        version,
        cluster_id: shared.cluster_id.clone(),
        from: shared.id,
        to: peer,
    }
    .encode(&mut hello);
    let exchange = async {
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut reply = [0u8; HANDSHAKE_REPLY_BYTES];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(shared.handshake_timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(ConnectError::HandshakeIo(e)),
        Err(_) => return Err(ConnectError::HandshakeTimeout(shared.handshake_timeout)),
    };
    let reply = HandshakeReply::decode(&reply).map_err(ConnectError::BadReply)?;
    let reason = match reply.status {
        HandshakeStatus::Accepted => return Ok(stream),
        HandshakeStatus::VersionMismatch => VERSION_MISMATCH,
        HandshakeStatus::ClusterMismatch => {
            "cluster id mismatch (is it a node of another cluster?)"
        }
        HandshakeStatus::UnknownSender => "this node's id is not among its peers",
        HandshakeStatus::WrongReceiver => "it is not the node id we dialed (stale address?)",
        HandshakeStatus::WrongCertificate => {
            "our TLS certificate does not name this node's id (raftlog-node-<id>)"
        }
        HandshakeStatus::WrongAddress => {
            "we connect from an address other than this node's raft_addr in its membership \
             (a host with several addresses: give raft_addr the one it routes from)"
        }
    };
    Err(ConnectError::Refused {
        reason,
        version: reply.version,
    })
}

/// Connects to `addr` from `source`, this node's `raft_addr` IP, when that is a specific
/// address on the same side of loopback as `addr`. Without TLS the acceptor checks that a
/// peer connects from the IP of its `raft_addr` (issue 16), and on a host with several
/// addresses the kernel might otherwise pick another one.
async fn dial(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    if source.is_unspecified()
        || source.is_loopback() != addr.ip().is_loopback()
        || source.is_ipv4() != addr.is_ipv4()
    {
        return TcpStream::connect(addr).await;
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Moves queued envelopes onto the connection until it fails or the queue closes.
///
/// Each round waits for one envelope, then takes whatever else is already queued (up
/// to `batch_bytes_max`), encodes it all into `buf` and writes it with one `write_all`:
/// under load, many messages share a syscall and a TCP segment; when idle, a lone
/// heartbeat goes out at once. While the link is busy the round first lets the tasks
/// already runnable queue theirs (`crate::coalesce`).
async fn pump(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
    stream: PeerStream,
    version: u16,
    queue: &mut Outgoing,
    buf: &mut Vec<u8>,
) -> Ended {
    let counters = &shared.counters;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The acceptor never sends after its handshake reply, so a readable socket means it
    // closed (EOF) or broke: noticing that here reports the loss at once instead of at
    // the next write, which may be long after on an idle link.
    let mut probe = [0u8; 1];
    let mut coalescer = Coalescer::default();
    loop {
        let first = tokio::select! {
            env = queue.recv() => env,
            read = reader.read(&mut probe) => {
                return Ended::Lost(match read {
                    Ok(0) => "closed by the peer".into(),
                    // Over TLS, a peer that exits without close_notify reads as this.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "closed by the peer".into(),
                    Ok(_) => "peer sent unexpected bytes".into(),
                    Err(e) => e.to_string(),
                });
            }
        };
        let Some(first) = first else {
            return Ended::QueueClosed;
        };
        buf.clear();
        let mut frames = 0u64;
        let mut taken = 0u64;
        let mut next = Some(first);
        coalescer.before_draining(!queue.is_empty()).await;
        while let Some(frame) = next.take() {
            taken += 1;
            match codec::encode_peer_frame(&frame, version, shared.max_frame_bytes, buf) {
                Ok(_) => frames += 1,
                Err(e) => {
                    tracing::warn!(id = shared.id, peer, %addr, "dropping a message that cannot be framed: {e}");
                    counters.dropped(&counters.dropped_oversize, &frame, "too large to frame");
                }
            }
            if buf.len() < shared.batch_bytes_max {
                next = queue.try_recv();
            }
        }
        coalescer.drained(frames as usize);
        if frames == 0 {
            queue.settle(taken);
            continue;
        }
        let write = async {
            writer.write_all(buf).await?;
            // TLS holds the last record until flushed; for TCP this is a no-op.
            writer.flush().await
        };
        match tokio::time::timeout(shared.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                bump(&counters.dropped_write_failed, frames);
                queue.settle(taken);
                return Ended::Lost(format!("write failed: {e}"));
            }
            Err(_) => {
                bump(&counters.dropped_write_failed, frames);
                queue.settle(taken);
                return Ended::Lost(format!(
                    "a write of {} bytes made no headway for {:?}",
                    buf.len(),
                    shared.write_timeout
                ));
            }
        }
        bump(&counters.frames_sent, frames);
        bump(&counters.sent_bytes, buf.len() as u64);
        bump(&counters.write_batches, 1);
        queue.settle(taken);
        // One InstallSnapshot batch may have grown the buffer to many MiB; do not keep
        // that per peer forever.
        if buf.capacity() > 4 * shared.batch_bytes_max.max(1 << 20) {
            *buf = Vec::with_capacity(shared.batch_bytes_max.min(1 << 20) + 4096);
        }
    }
}
