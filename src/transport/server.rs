//! The inbound side: the listener on the node's `raft_addr` and one task per accepted
//! connection that checks the handshake, then reads, verifies and delivers frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::codec::{
    FrameHeader, Handshake, HandshakeReply, HandshakeStatus, PeerFrame, FRAME_HEADER_BYTES,
    HANDSHAKE_FIXED_BYTES, PROTOCOL_VERSION_MIN,
};
use super::stream::PeerStream;
use super::{bump, Shared};
use crate::raft::{Envelope, NodeId};

/// Read buffer size for small frames; large frames reserve exactly what they need.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Binds the listener. SO_REUSEADDR lets a restarted node listen again at once even
/// while connections of its previous run linger in TIME_WAIT.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until aborted. Connection tasks live in a `JoinSet` owned by
/// this task, so aborting it (shutdown) aborts them all.
pub(super) async fn run_listener(
    shared: Arc<Shared>,
    listener: TcpListener,
    inbound: mpsc::Sender<Envelope>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    bump(&shared.counters.connections_accepted, 1);
                    connections.spawn(serve(Arc::clone(&shared), stream, remote, inbound.clone()));
                }
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off a little instead of spinning;
                    // the listener stays up and retries.
                    tracing::warn!(id = shared.id, "accepting a peer connection failed: {e}; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one inbound connection until it closes, misbehaves, or its peer is removed.
async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    inbound: mpsc::Sender<Envelope>,
) {
    let counters = &shared.counters;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(id = shared.id, %remote, "set_nodelay failed: {e}");
    }
    shared.set_keepalive(&stream);
    let Some((mut stream, peer_cert)) = secure(&shared, stream, remote).await else {
        return;
    };
    let hello = match tokio::time::timeout(shared.handshake_timeout, read_handshake(&mut stream))
        .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(HandshakeFailure::Garbage(why))) => {
            bump(&counters.garbage_frames, 1);
            tracing::warn!(id = shared.id, %remote, "garbage instead of a peer handshake, closing: {why}");
            return;
        }
        Ok(Err(HandshakeFailure::Io(e))) => {
            tracing::debug!(id = shared.id, %remote, "connection closed during the handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(id = shared.id, %remote, "no handshake within {:?}, closing", shared.handshake_timeout);
            return;
        }
    };
    let status = judge(&shared, &hello, remote, peer_cert.as_ref());
    let reply = HandshakeReply {
        version: shared.protocol_version,
        status,
    }
    .encode();
    if status != HandshakeStatus::Accepted {
        bump(&counters.handshakes_refused, 1);
        // A misconfigured node redials every backoff_max; warn once a minute per
        // (sender, verdict), not on every attempt.
        if shared.refusals.should_warn(hello.from, status) {
            tracing::warn!(
                id = shared.id,
                %remote,
                from = hello.from,
                to = hello.to,
                cluster_id = %hello.cluster_id,
                version = hello.version,
                "refused a peer connection: {status:?} (repeats within {:?} are logged at debug)",
                RefusalLog::QUIET
            );
        } else {
            tracing::debug!(id = shared.id, %remote, from = hello.from, "refused a peer connection again: {status:?}");
        }
        // Best effort: tell the dialer why, so it can log it; then close.
        let _ = tokio::time::timeout(shared.handshake_timeout, async {
            stream.write_all(&reply).await?;
            stream.flush().await
        })
        .await;
        return;
    }
    if let Err(e) = async {
        stream.write_all(&reply).await?;
        stream.flush().await
    }
    .await
    {
        tracing::debug!(id = shared.id, %remote, "handshake reply failed: {e}");
        return;
    }
    let peer = hello.from;
    tracing::info!(id = shared.id, peer, %remote, "inbound peer connection accepted");
    shared.poke_redial(peer);
    let (seq, replaced) = shared.register_inbound(peer);
    let why = read_frames(
        &shared,
        &mut stream,
        remote,
        (peer, hello.version),
        &inbound,
        &replaced,
    )
    .await;
    shared.unregister_inbound(peer, seq);
    shared.link_lost(peer);
    tracing::info!(id = shared.id, peer, %remote, "inbound peer connection closed: {why}");
}

/// With TLS, performs the TLS handshake: the dialer must present a certificate that chains
/// to the cluster CA, or nothing more is read. Returns the stream and the dialer's leaf
/// certificate; `None` once the connection is refused (logged and counted).
async fn secure(
    shared: &Shared,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<(PeerStream, Option<CertificateDer<'static>>)> {
    let Some(tls) = &shared.tls else {
        return Some((Box::new(stream), None));
    };
    let refused = |why: String| {
        bump(&shared.counters.tls_refused, 1);
        // Node id 0 is nobody: TLS refusals come before any id is claimed.
        if shared
            .refusals
            .should_warn(0, HandshakeStatus::WrongCertificate)
        {
            tracing::warn!(
                id = shared.id,
                %remote,
                "refused a peer connection: {why} (repeats within {:?} are logged at debug)",
                RefusalLog::QUIET
            );
        } else {
            tracing::debug!(id = shared.id, %remote, "refused a peer connection again: {why}");
        }
    };
    match tokio::time::timeout(shared.handshake_timeout, tls.peer_acceptor().accept(stream)).await {
        Ok(Ok(stream)) => {
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.clone().into_owned());
            Some((Box::new(stream), cert))
        }
        Ok(Err(e)) => {
            refused(format!(
                "TLS handshake failed: {e} (a peer must present a certificate signed by this \
                 cluster's tls.ca)"
            ));
            None
        }
        Err(_) => {
            refused(format!(
                "no TLS handshake within {:?}",
                shared.handshake_timeout
            ));
            None
        }
    }
}

/// Remembers when each kind of refusal was last logged at warn level.
#[derive(Default)]
pub(super) struct RefusalLog {
    last_warned: Mutex<HashMap<(NodeId, HandshakeStatus), Instant>>,
}

impl RefusalLog {
    /// How long repeats of one refusal stay at debug level.
    const QUIET: Duration = Duration::from_secs(60);
    /// Bounds the map if many distinct ids knock.
    const ENTRIES_MAX: usize = 1024;

    fn should_warn(&self, from: NodeId, status: HandshakeStatus) -> bool {
        let mut last = self
            .last_warned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if let Some(at) = last.get(&(from, status)) {
            if now.duration_since(*at) < Self::QUIET {
                return false;
            }
        }
        if last.len() >= Self::ENTRIES_MAX {
            last.clear();
        }
        last.insert((from, status), now);
        true
    }
}

/// The acceptor's checks, in order (a case table rather than nested ifs).
fn judge(
    shared: &Shared,
    hello: &Handshake,
    remote: SocketAddr,
    peer_cert: Option<&CertificateDer<'_>>,
) -> HandshakeStatus {
    // A dialer of an older version this node still speaks is taken in its version; a
    // node made to speak an older one (tests) refuses newer dialers as an old build would.
    if !(PROTOCOL_VERSION_MIN..=shared.protocol_version).contains(&hello.version) {
        HandshakeStatus::VersionMismatch
    } else if hello.cluster_id != shared.cluster_id {
        HandshakeStatus::ClusterMismatch
    } else if hello.to != shared.id {
        HandshakeStatus::WrongReceiver
    } else if hello.from == shared.id || !shared.peers.contains(hello.from) {
        HandshakeStatus::UnknownSender
    } else if shared.tls.is_some() {
        // TLS proved the dialer holds a key the CA certified; the id it may speak for is
        // the one its certificate names, whatever address it comes from.
        let named = peer_cert.is_some_and(|cert| {
            crate::security::tls::names(cert, &crate::security::node_name(hello.from))
        });
        if named {
            HandshakeStatus::Accepted
        } else {
            HandshakeStatus::WrongCertificate
        }
    } else if !shared.peers.source_matches(hello.from, remote) {
        HandshakeStatus::WrongAddress
    } else {
        HandshakeStatus::Accepted
    }
}

enum HandshakeFailure {
    Garbage(String),
    Io(std::io::Error),
}

async fn read_handshake(stream: &mut PeerStream) -> Result<Handshake, HandshakeFailure> {
    let mut buf = vec![0u8; HANDSHAKE_FIXED_BYTES];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(HandshakeFailure::Io)?;
    let fixed: &[u8; HANDSHAKE_FIXED_BYTES] = buf
        .as_slice()
        .try_into()
        .map_err(|_| HandshakeFailure::Garbage("short handshake".into()))?;
    // Checks the magic and bounds the cluster id before reading (or allocating) more.
    let remaining =
        Handshake::remaining_len(fixed).map_err(|e| HandshakeFailure::Garbage(e.to_string()))?;
    buf.resize(HANDSHAKE_FIXED_BYTES + remaining, 0);
    stream
        .read_exact(&mut buf[HANDSHAKE_FIXED_BYTES..])
        .await
        .map_err(HandshakeFailure::Io)?;
    Handshake::decode(&buf).map_err(|e| HandshakeFailure::Garbage(e.to_string()))
}

/// Reads frames and delivers their envelopes until something ends the connection;
/// returns what did.
async fn read_frames(
    shared: &Shared,
    stream: &mut PeerStream,
    remote: SocketAddr,
    (peer, version): (NodeId, u16),
    inbound: &mpsc::Sender<Envelope>,
    replaced: &tokio::sync::Notify,
) -> String {
    let counters = &shared.counters;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut generation = shared.peers.generation.load(Ordering::Acquire);
    loop {
        // Decode every complete frame in the buffer: one read often brings many.
        while let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() {
            let header = match FrameHeader::parse(header, shared.max_frame_bytes) {
                Ok(header) => header,
                Err(e) => return garbage(shared, remote, peer, &e.to_string()),
            };
            let frame_len = header.frame_len();
            if buf.len() < frame_len {
                // The length passed the limit check, so reserving it is bounded.
                buf.reserve(frame_len - buf.len());
                break;
            }
            let frame = match super::codec::decode_peer_body(
                &header,
                &buf[FRAME_HEADER_BYTES..frame_len],
                version,
            ) {
                Ok(frame) => frame,
                Err(e) => return garbage(shared, remote, peer, &e.to_string()),
            };
            buf.advance(frame_len);
            let envelope = match frame {
                PeerFrame::Raft(envelope) => envelope,
                forward => {
                    bump(&counters.frames_received, 1);
                    bump(&counters.received_bytes, frame_len as u64);
                    if !shared.isolated.load(Ordering::Relaxed) {
                        deliver_forward(shared, peer, forward);
                    }
                    continue;
                }
            };
            if envelope.from != peer || envelope.to != shared.id {
                bump(&counters.envelopes_refused, 1);
                tracing::warn!(
                    id = shared.id,
                    peer,
                    %remote,
                    from = envelope.from,
                    to = envelope.to,
                    "envelope does not match the connection's handshake; closing"
                );
                return "envelope from/to mismatch".into();
            }
            bump(&counters.frames_received, 1);
            bump(&counters.received_bytes, frame_len as u64);
            if shared.isolated.load(Ordering::Relaxed) {
                continue;
            }
            if inbound.send(envelope).await.is_err() {
                return "the node stopped receiving".into();
            }
        }
        // A membership change may have removed this peer since the handshake.
        let now = shared.peers.generation.load(Ordering::Acquire);
        if now != generation {
            generation = now;
            if !shared.peers.contains(peer) {
                return "peer removed from the peer set".into();
            }
        }
        // A snapshot chunk may have grown the buffer to many MiB; do not keep that for
        // the life of the connection.
        if buf.is_empty() && buf.capacity() > 4 << 20 {
            buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        if buf.capacity() - buf.len() < FRAME_HEADER_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let read = tokio::select! {
            read = tokio::time::timeout(shared.idle_timeout, stream.read_buf(&mut buf)) => read,
            () = replaced.notified() => return "replaced by a newer connection from the same peer".into(),
        };
        let Ok(read) = read else {
            bump(&counters.inbound_idle_closed, 1);
            return format!("no frame for {:?} (idle timeout)", shared.idle_timeout);
        };
        match read {
            Ok(0) if buf.is_empty() => return "closed by the peer".into(),
            Ok(0) => {
                return format!(
                    "closed by the peer in the middle of a frame ({} bytes unread)",
                    buf.len()
                )
            }
            Ok(_) => {}
            // Over TLS, a peer that exits without close_notify (any SIGKILL, most stops)
            // reads as an unexpected EOF: between frames that is an ordinary close.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => {
                return "closed by the peer".into()
            }
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// Hands a forward frame to the node without waiting: a full sink drops it (counted),
/// and the follower waiting on it answers "unknown outcome" at its timeout, rather than
/// Raft's messages waiting behind client writes.
fn deliver_forward(shared: &Shared, peer: NodeId, frame: PeerFrame) {
    if shared.forward_sink.try_send((peer, frame)).is_err() {
        bump(&shared.counters.forwards_undelivered, 1);
    }
}

fn garbage(shared: &Shared, remote: SocketAddr, peer: NodeId, what: &str) -> String {
    bump(&shared.counters.garbage_frames, 1);
    tracing::warn!(id = shared.id, peer, %remote, "garbage frame from peer, dropping the connection: {what}");
    format!("garbage frame: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tls_a_peer_id_is_believed_only_from_its_members_ip() {
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let peers = super::super::PeerSet {
            addrs: std::sync::RwLock::new(
                [
                    (2, addr("10.0.0.2:7002")),
                    (3, addr("0.0.0.0:7003")),
                    (4, addr("[fd00::4]:7004")),
                ]
                .into_iter()
                .collect(),
            ),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        assert!(peers.source_matches(2, addr("10.0.0.2:50000")));
        assert!(!peers.source_matches(2, addr("10.0.0.9:50000")));
        assert!(!peers.source_matches(2, addr("127.0.0.1:50000")));
        // An IPv4 peer seen through a dual-stack listener.
        assert!(peers.source_matches(2, addr("[::ffff:10.0.0.2]:50000")));
        assert!(peers.source_matches(4, addr("[fd00::4]:1")));
        assert!(!peers.source_matches(4, addr("[fd00::5]:1")));
        // 0.0.0.0 names no host: nothing to compare with.
        assert!(peers.source_matches(3, addr("192.0.2.1:1")));
        assert!(!peers.source_matches(9, addr("10.0.0.2:1")));
    }

    #[test]
    fn refusals_warn_once_per_sender_and_verdict_within_the_quiet_period() {
        let log = RefusalLog::default();
        assert!(log.should_warn(7, HandshakeStatus::ClusterMismatch));
        assert!(!log.should_warn(7, HandshakeStatus::ClusterMismatch));
        assert!(log.should_warn(7, HandshakeStatus::UnknownSender));
        assert!(log.should_warn(8, HandshakeStatus::ClusterMismatch));
        assert!(!log.should_warn(8, HandshakeStatus::ClusterMismatch));
        // Once the quiet period has passed, the same refusal warns again.
        {
            let mut last = log.last_warned.lock().unwrap();
            let at = last
                .get_mut(&(7, HandshakeStatus::ClusterMismatch))
                .unwrap();
            match at.checked_sub(RefusalLog::QUIET) {
                Some(earlier) => *at = earlier,
                None => return, // the clock started less than a minute ago
            }
        }
        assert!(log.should_warn(7, HandshakeStatus::ClusterMismatch));
    }
}
