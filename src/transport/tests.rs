//! Transport tests over real TCP on 127.0.0.1 with ephemeral ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::codec::{
    encode_frame, Handshake, HandshakeReply, HandshakeStatus, HANDSHAKE_FIXED_BYTES,
    HANDSHAKE_REPLY_BYTES, PROTOCOL_VERSION,
};
use super::*;
use crate::raft::{Entry, EntryKind, Message, SnapshotMeta};

const CLUSTER: &str = "test-cluster";
const WAIT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// An address where nothing listens (bound once, then released).
fn dead_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind(localhost()).expect("bind an ephemeral port");
    socket.local_addr().expect("local addr")
}

async fn start_with(
    id: NodeId,
    cluster: &str,
    listen: SocketAddr,
    peers: BTreeMap<NodeId, SocketAddr>,
    tweak: impl FnOnce(&mut TransportConfig),
) -> (Transport, mpsc::Receiver<Envelope>) {
    let mut config = TransportConfig::new(id, cluster, listen, peers);
    tweak(&mut config);
    Transport::start(config).await.expect("transport starts")
}

async fn start(
    id: NodeId,
    peers: BTreeMap<NodeId, SocketAddr>,
) -> (Transport, mpsc::Receiver<Envelope>) {
    start_with(id, CLUSTER, localhost(), peers, |_| {}).await
}

/// Starts two transports, 1 and 2, that know each other.
async fn pair(
    tweak: impl Fn(&mut TransportConfig),
) -> (
    (Transport, mpsc::Receiver<Envelope>),
    (Transport, mpsc::Receiver<Envelope>),
) {
    let a = start_with(1, CLUSTER, localhost(), BTreeMap::new(), &tweak).await;
    let b = start_with(
        2,
        CLUSTER,
        localhost(),
        BTreeMap::from([(1, a.0.local_addr())]),
        &tweak,
    )
    .await;
    a.0.set_peers(BTreeMap::from([(2, b.0.local_addr())]));
    (a, b)
}

/// An AppendEntries whose `read_ctx` numbers it, with `payload_bytes` in one entry.
fn numbered(from: NodeId, to: NodeId, seq: u64, payload: Bytes) -> Envelope {
    Envelope {
        from,
        to,
        message: Message::AppendEntries {
            term: 1,
            prev_log_index: seq,
            prev_log_term: 1,
            entries: if payload.is_empty() {
                Vec::new()
            } else {
                vec![Entry {
                    index: seq + 1,
                    term: 1,
                    kind: EntryKind::Normal,
                    payload,
                }]
            },
            leader_commit: seq,
            read_ctx: seq,
        },
    }
}

fn seq_of(env: &Envelope) -> u64 {
    match &env.message {
        Message::AppendEntries { read_ctx, .. } => *read_ctx,
        other => panic!("expected a numbered AppendEntries, got {other:?}"),
    }
}

fn snapshot_chunk(from: NodeId, to: NodeId, bytes: usize) -> Envelope {
    Envelope {
        from,
        to,
        message: Message::InstallSnapshot {
            term: 1,
            meta: SnapshotMeta {
                last_index: 77,
                last_term: 1,
                membership: Default::default(),
            },
            offset: 0,
            data: Bytes::from(
                (0..bytes)
                    .map(|i| (i * 31 % 256) as u8)
                    .collect::<Vec<u8>>(),
            ),
            done: true,
        },
    }
}

async fn recv_n(rx: &mut mpsc::Receiver<Envelope>, n: usize) -> Vec<Envelope> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(env)) => got.push(env),
            Ok(None) => panic!(
                "inbound channel closed after {} of {n} envelopes",
                got.len()
            ),
            Err(_) => panic!(
                "only {} of {n} envelopes arrived within {WAIT:?}",
                got.len()
            ),
        }
    }
    got
}

/// Polls `cond` until it holds or `WAIT` passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that nothing arrives for `quiet`.
async fn assert_nothing_arrives(rx: &mut mpsc::Receiver<Envelope>, quiet: Duration) {
    if let Ok(Some(env)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("expected nothing, received {env:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_many_messages_both_ways_with_a_large_snapshot_chunk() {
    let ((a, mut a_rx), (b, mut b_rx)) = pair(|c| c.queue_len = 20_000).await;
    const N: u64 = 3000;
    let payload = Bytes::from(vec![7u8; 300]);
    let snapshot = snapshot_chunk(1, 2, 1 << 20);
    let mut a_to_b = Vec::new();
    for seq in 0..N {
        a_to_b.push(numbered(
            1,
            2,
            seq,
            if seq % 3 == 0 {
                payload.clone()
            } else {
                Bytes::new()
            },
        ));
        if seq == N / 2 {
            a_to_b.push(snapshot.clone());
        }
    }
    let b_to_a: Vec<Envelope> = (0..N)
        .map(|seq| numbered(2, 1, seq, Bytes::new()))
        .collect();
    for env in &a_to_b {
        a.send(env.clone()).expect("queue has room");
    }
    for env in &b_to_a {
        b.send(env.clone()).expect("queue has room");
    }
    assert_eq!(recv_n(&mut b_rx, a_to_b.len()).await, a_to_b);
    assert_eq!(recv_n(&mut a_rx, b_to_a.len()).await, b_to_a);

    let (am, bm) = (a.metrics(), b.metrics());
    assert_eq!(am.frames_sent, a_to_b.len() as u64);
    assert_eq!(bm.frames_received, a_to_b.len() as u64);
    assert_eq!(am.sent_bytes, bm.received_bytes);
    assert!(
        bm.received_bytes > 1 << 20,
        "snapshot bytes counted: {bm:?}"
    );
    assert_eq!(am.frames_received, N);
    assert_eq!(am.peers_connected, 1);
    assert_eq!(
        am.dropped_queue_full + am.garbage_frames + bm.garbage_frames,
        0
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Tasks that one event makes runnable together (the HTTP tasks of the connections one
/// `epoll_wait` reported) each queue a frame; the pump, woken by the first, must not take
/// that frame alone. One worker, so the woken pump would run next (tokio's LIFO slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn frames_from_tasks_woken_together_share_a_write() {
    let ((a, _a_rx), (b, mut b_rx)) = pair(|_| {}).await;
    let a = std::sync::Arc::new(a);
    const SENDERS: u64 = 64;
    let mut batches_per_round = Vec::new();
    for round in 0..3u64 {
        let (go, _) = tokio::sync::watch::channel(false);
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                let (a, mut go) = (std::sync::Arc::clone(&a), go.subscribe());
                tokio::spawn(async move {
                    go.wait_for(|go| *go).await.expect("sender kept");
                    a.send(numbered(1, 2, round * SENDERS + i, Bytes::new()))
                        .expect("queue has room");
                })
            })
            .collect();
        let before = a.metrics().write_batches;
        go.send_replace(true);
        for sender in senders {
            sender.await.expect("sender task");
        }
        recv_n(&mut b_rx, SENDERS as usize).await;
        batches_per_round.push(a.metrics().write_batches - before);
    }
    // The first round may find the pump idle; after it the link counts as busy.
    assert!(
        batches_per_round[1..].iter().all(|&batches| batches <= 4),
        "{SENDERS} frames queued by tasks woken together took {batches_per_round:?} writes per round"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sends_are_coalesced_into_few_writes_and_arrive_in_order() {
    let ((a, _a_rx), (b, mut b_rx)) = pair(|c| c.queue_len = 60_000).await;
    const N: u64 = 50_000;
    for seq in 0..N {
        a.send(numbered(1, 2, seq, Bytes::new()))
            .expect("queue has room");
    }
    let got = recv_n(&mut b_rx, N as usize).await;
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..N).collect::<Vec<u64>>(), "per-peer order kept");
    let m = a.metrics();
    assert_eq!(m.frames_sent, N);
    assert!(
        m.write_batches * 10 <= m.frames_sent,
        "expected at least 10 frames per write, got {} writes for {} frames",
        m.write_batches,
        m.frames_sent
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_peer_restarts() {
    let ((a, _a_rx), (b, mut b_rx)) = pair(|_| {}).await;
    let b_addr = b.local_addr();
    a.send(numbered(1, 2, 0, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 0);
    assert_eq!(a.metrics().connects, 1);

    b.shutdown().await;
    drop(b_rx);
    eventually("1 notices that 2 is gone", || {
        a.metrics().peers_connected == 0
    })
    .await;
    // Wait for a refused redial before restarting 2: otherwise the restart can win the
    // race against 1's first redial and no dial ever fails (CI saw exactly that).
    eventually("1 redials 2 and is refused", || {
        let _ = a.send(numbered(1, 2, 1, Bytes::new()));
        a.metrics().connect_errors >= 1
    })
    .await;

    // Restart 2 on the same address; 1 redials with backoff and resumes on its own.
    let (b2, mut b2_rx) = start_with(
        2,
        CLUSTER,
        b_addr,
        BTreeMap::from([(1, a.local_addr())]),
        |_| {},
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let mut seq = 1;
    let first = loop {
        let _ = a.send(numbered(1, 2, seq, Bytes::new()));
        seq += 1;
        if let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(20), b2_rx.recv()).await {
            break env;
        }
        assert!(
            Instant::now() < deadline,
            "no message reached the restarted peer"
        );
    };
    assert!(seq_of(&first) >= 1);
    let m = a.metrics();
    assert!(m.connects >= 2, "a second connection was made: {m:?}");
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_that_dials_us_is_redialed_without_waiting_out_the_backoff() {
    // 1 backs off 3 s after every failed dial; 2's own dial to 1 must cut that short.
    let backoff = Duration::from_secs(3);
    let (a, _a_rx) = start_with(1, CLUSTER, localhost(), BTreeMap::new(), |c| {
        c.backoff_min = backoff;
        c.backoff_max = backoff;
    })
    .await;
    let (b, mut b_rx) = start(2, BTreeMap::from([(1, a.local_addr())])).await;
    let b_addr = b.local_addr();
    a.set_peers(BTreeMap::from([(2, b_addr)]));
    a.send(numbered(1, 2, 0, Bytes::new())).expect("queued");
    recv_n(&mut b_rx, 1).await;

    b.shutdown().await;
    drop(b_rx);
    // 1 notices, redials at once, is refused, and starts its 3 s backoff.
    eventually("1's redial of the stopped 2 fails", || {
        a.metrics().connect_errors >= 1
    })
    .await;
    let restarted = Instant::now();
    let (b2, mut b2_rx) = start_with(
        2,
        CLUSTER,
        b_addr,
        BTreeMap::from([(1, a.local_addr())]),
        |_| {},
    )
    .await;
    let mut seq = 1;
    loop {
        let _ = a.send(numbered(1, 2, seq, Bytes::new()));
        seq += 1;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), b2_rx.recv()).await {
            break;
        }
        // Half the backoff: waiting it out would take the whole of it (less the few
        // ms between the failed dial and the restart).
        assert!(
            restarted.elapsed() < backoff / 2,
            "1 waited out its backoff instead of redialing when 2 dialed it"
        );
    }
    assert_eq!(
        a.metrics().connect_errors,
        1,
        "no second failed dial was needed"
    );
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let (a, _a_rx) = start_with(1, "alpha", localhost(), BTreeMap::new(), |_| {}).await;
    let (b, mut b_rx) = start_with(
        2,
        "beta",
        localhost(),
        BTreeMap::from([(1, a.local_addr())]),
        |_| {},
    )
    .await;
    a.set_peers(BTreeMap::from([(2, b.local_addr())]));
    for seq in 0..10 {
        let _ = a.send(numbered(1, 2, seq, Bytes::new()));
    }
    eventually("2 refuses 1's handshake", || {
        b.metrics().handshakes_refused >= 1
    })
    .await;
    eventually("1 counts the refusal", || a.metrics().connect_errors >= 1).await;
    assert_nothing_arrives(&mut b_rx, Duration::from_millis(200)).await;
    assert_eq!(a.metrics().frames_sent, 0);
    assert_eq!(a.metrics().peers_connected, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_is_refused_until_added_to_the_peer_set() {
    let (a, _a_rx) = start(1, BTreeMap::new()).await;
    // 2 knows only node 3, not 1.
    let (b, mut b_rx) = start(2, BTreeMap::from([(3, dead_addr())])).await;
    a.set_peers(BTreeMap::from([(2, b.local_addr())]));
    let _ = a.send(numbered(1, 2, 0, Bytes::new()));
    eventually("2 refuses unknown node 1", || {
        b.metrics().handshakes_refused >= 1
    })
    .await;
    assert_nothing_arrives(&mut b_rx, Duration::from_millis(200)).await;

    // A membership change adds 1: its redial (within the 1 s backoff cap) is accepted.
    b.set_peers(BTreeMap::from([(1, a.local_addr()), (3, dead_addr())]));
    let deadline = Instant::now() + WAIT;
    let mut seq = 1;
    loop {
        let _ = a.send(numbered(1, 2, seq, Bytes::new()));
        seq += 1;
        if let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(20), b_rx.recv()).await {
            assert_eq!(env.from, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1 never got through after being added"
        );
    }

    // Removing 1 again closes its open inbound connection.
    b.set_peers(BTreeMap::from([(3, dead_addr())]));
    let refused_before = b.metrics().handshakes_refused;
    let deadline = Instant::now() + WAIT;
    while b.metrics().handshakes_refused == refused_before {
        let _ = a.send(numbered(1, 2, seq, Bytes::new()));
        seq += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            Instant::now() < deadline,
            "removed node 1 was never refused again"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Opens a raw connection to `addr` and handshakes as `from`.
/// It speaks protocol version 1, whose frames are bare
/// envelopes ([`encode_frame`]): a version 2 acceptor must still take them.
async fn raw_peer(addr: SocketAddr, from: NodeId, to: NodeId) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut hello = Vec::new();
    Handshake {
        version: 1,
        cluster_id: CLUSTER.into(),
        from,
        to,
    }
    .encode(&mut hello);
    stream.write_all(&hello).await.expect("send handshake");
    let mut reply = [0u8; HANDSHAKE_REPLY_BYTES];
    stream
        .read_exact(&mut reply)
        .await
        .expect("handshake reply");
    let reply = HandshakeReply::decode(&reply).expect("valid reply");
    assert_eq!(reply.status, HandshakeStatus::Accepted);
    stream
}

/// Sends `hello` on a fresh connection and returns the acceptor's verdict.
async fn verdict(addr: SocketAddr, hello: Handshake) -> HandshakeStatus {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    hello.encode(&mut buf);
    stream.write_all(&buf).await.expect("send handshake");
    let mut reply = [0u8; HANDSHAKE_REPLY_BYTES];
    stream
        .read_exact(&mut reply)
        .await
        .expect("handshake reply");
    let reply = HandshakeReply::decode(&reply).expect("valid reply");
    assert_eq!(reply.version, PROTOCOL_VERSION);
    if reply.status != HandshakeStatus::Accepted {
        assert_closed_by_peer(&mut stream, "a refused handshake").await;
    }
    reply.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_judged_by_version_cluster_receiver_and_sender() {
    let (b, mut b_rx) = start(2, BTreeMap::from([(1, dead_addr()), (3, dead_addr())])).await;
    let addr = b.local_addr();
    let hello = |version, cluster: &str, from, to| Handshake {
        version,
        cluster_id: cluster.into(),
        from,
        to,
    };
    let cases = [
        (
            hello(PROTOCOL_VERSION + 1, CLUSTER, 1, 2),
            HandshakeStatus::VersionMismatch,
        ),
        (
            hello(PROTOCOL_VERSION, "other", 1, 2),
            HandshakeStatus::ClusterMismatch,
        ),
        (
            hello(PROTOCOL_VERSION, "", 1, 2),
            HandshakeStatus::ClusterMismatch,
        ),
        (
            hello(PROTOCOL_VERSION, CLUSTER, 1, 3),
            HandshakeStatus::WrongReceiver,
        ),
        (
            hello(PROTOCOL_VERSION, CLUSTER, 4, 2),
            HandshakeStatus::UnknownSender,
        ),
        (
            hello(PROTOCOL_VERSION, CLUSTER, 2, 2),
            HandshakeStatus::UnknownSender,
        ),
        (
            hello(PROTOCOL_VERSION, CLUSTER, 0, 2),
            HandshakeStatus::UnknownSender,
        ),
        (
            hello(PROTOCOL_VERSION, CLUSTER, 3, 2),
            HandshakeStatus::Accepted,
        ),
    ];
    for (i, (hello, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            verdict(addr, hello.clone()).await,
            expected,
            "case {i}: {hello:?}"
        );
    }
    let m = b.metrics();
    assert_eq!(m.handshakes_refused, 7);
    assert_eq!(m.garbage_frames, 0);
    assert_eq!(m.connections_accepted, 8);

    // Shutting down ends the inbound channel.
    b.shutdown().await;
    match tokio::time::timeout(WAIT, b_rx.recv()).await {
        Ok(None) => {}
        other => panic!("inbound channel still open after shutdown: {other:?}"),
    }
}

/// Asserts that the other side closes `stream` (EOF or reset) soon.
async fn assert_closed_by_peer(stream: &mut TcpStream, what: &str) {
    let mut sink = [0u8; 1024];
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection not closed after {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_the_listener_keeps_serving() {
    let (b, mut b_rx) = start(2, BTreeMap::from([(1, dead_addr())])).await;
    let addr = b.local_addr();

    // 1. Random bytes instead of a handshake (a fixed xorshift stream: reproducible).
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_ne!(&noise[..4], b"RLPR");
    let _ = stream.write_all(&noise).await;
    assert_closed_by_peer(&mut stream, "random bytes").await;
    eventually("noise counted", || b.metrics().garbage_frames == 1).await;

    // 2. A valid handshake, then a length prefix far over the limit.
    let mut stream = raw_peer(addr, 1, 2).await;
    stream
        .write_all(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0])
        .await
        .expect("write");
    assert_closed_by_peer(&mut stream, "an oversize length").await;
    eventually("oversize counted", || b.metrics().garbage_frames == 2).await;

    // 3. A good frame (delivered), then a valid header whose CRC does not match.
    let mut stream = raw_peer(addr, 1, 2).await;
    let good = numbered(1, 2, 42, Bytes::from_static(b"hello"));
    let mut buf = Vec::new();
    encode_frame(&good, 1 << 20, &mut buf).expect("encode");
    let bad_start = buf.len();
    encode_frame(&numbered(1, 2, 43, Bytes::new()), 1 << 20, &mut buf).expect("encode");
    buf[bad_start + 4] ^= 0xff;
    stream.write_all(&buf).await.expect("write");
    assert_eq!(recv_n(&mut b_rx, 1).await, vec![good]);
    assert_closed_by_peer(&mut stream, "a bad CRC").await;
    eventually("bad CRC counted", || b.metrics().garbage_frames == 3).await;

    // 4. A well-formed envelope whose `from` is not the handshake's id.
    let mut stream = raw_peer(addr, 1, 2).await;
    let mut buf = Vec::new();
    encode_frame(&numbered(7, 2, 1, Bytes::new()), 1 << 20, &mut buf).expect("encode");
    stream.write_all(&buf).await.expect("write");
    assert_closed_by_peer(&mut stream, "a forged sender").await;
    eventually("forged sender counted", || {
        b.metrics().envelopes_refused == 1
    })
    .await;

    // 5. A truncated handshake, then a close: nothing to count, nothing to break.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&b"RLPR"[..]).await.expect("write");
    drop(stream);

    // The listener still serves a real peer.
    let (a, _a_rx) = start(1, BTreeMap::from([(2, addr)])).await;
    b.set_peers(BTreeMap::from([(1, a.local_addr())]));
    a.send(numbered(1, 2, 99, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 99);
    assert_nothing_arrives(&mut b_rx, Duration::from_millis(50)).await;
    assert_eq!(b.metrics().garbage_frames, 3);
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer that accepts and answers the handshake, then never reads: its socket buffers
/// fill and the sender's writes block.
async fn stalled_peer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(localhost()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut fixed = [0u8; HANDSHAKE_FIXED_BYTES];
            if stream.read_exact(&mut fixed).await.is_err() {
                continue;
            }
            let Ok(rest) = Handshake::remaining_len(&fixed) else {
                continue;
            };
            let mut tail = vec![0u8; rest];
            if stream.read_exact(&mut tail).await.is_err() {
                continue;
            }
            let reply = HandshakeReply {
                version: PROTOCOL_VERSION,
                status: HandshakeStatus::Accepted,
            };
            let _ = stream.write_all(&reply.encode()).await;
            held.push(stream); // keep it open, never read
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_stalled_peer_does_not_block_sends_to_a_live_peer() {
    let (stalled_addr, stalled_task) = stalled_peer().await;
    let (a, _a_rx) = start_with(1, CLUSTER, localhost(), BTreeMap::new(), |c| {
        c.queue_len = 256;
        c.write_timeout = Duration::from_millis(300);
    })
    .await;
    let (b, mut b_rx) = start(2, BTreeMap::from([(1, a.local_addr())])).await;
    // 2 knows 1 before 1 dials it, so the first dial is accepted.
    a.set_peers(BTreeMap::from([
        (2, b.local_addr()),
        (3, dead_addr()),
        (4, stalled_addr),
    ]));

    const ROUNDS: u64 = 2000;
    let big = Bytes::from(vec![1u8; 64 << 10]);
    let mut slowest = Duration::ZERO;
    // The live peer's queue may fill too when this machine is loaded and its task runs
    // late; the test then retries, as a flow-controlled sender would, and subtracts
    // those from the drop counts below.
    let mut live_queue_full = 0u64;
    for seq in 0..ROUNDS {
        for (to, payload) in [(3, Bytes::new()), (4, big.clone()), (2, Bytes::new())] {
            loop {
                let started = Instant::now();
                let sent = a.send(numbered(1, to, seq, payload.clone()));
                slowest = slowest.max(started.elapsed());
                if to == 2 && sent == Err(SendError::QueueFull { to: 2 }) {
                    live_queue_full += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                break;
            }
        }
        if seq % 50 == 49 {
            // Let the live peer's task drain its queue; the others' queues just fill.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let got = recv_n(&mut b_rx, ROUNDS as usize).await;
    assert_eq!(
        got.iter().map(seq_of).collect::<Vec<_>>(),
        (0..ROUNDS).collect::<Vec<_>>()
    );
    // A send that waited for the stalled peer would wait forever; the bound only has to
    // be generous enough for a loaded CI machine.
    assert!(
        slowest < Duration::from_secs(1),
        "a send blocked for {slowest:?}"
    );
    let m = a.metrics();
    let others_queue_full = m.dropped_queue_full - live_queue_full;
    assert!(
        others_queue_full > 0,
        "the stalled peer's queue overflowed: {m:?}"
    );
    assert!(
        others_queue_full + m.dropped_disconnected >= ROUNDS,
        "dead + stalled drops: {m:?}, {live_queue_full} of them to the live peer"
    );
    let statuses = a.peer_statuses();
    assert!(statuses.iter().any(|s| s.id == 2 && s.connected));
    assert!(statuses.iter().any(|s| s.id == 3 && !s.connected));
    // The stalled peer's link is declared dead by the write timeout and redialed.
    eventually("a write to the stalled peer times out", || {
        a.metrics().dropped_write_failed > 0
    })
    .await;
    eventually("the stalled peer is redialed", || a.metrics().connects >= 3).await;
    a.shutdown().await;
    b.shutdown().await;
    stalled_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_unroutable_messages_are_dropped_and_counted() {
    let ((a, _a_rx), (b, mut b_rx)) = pair(|c| c.max_frame_bytes = 64 << 10).await;
    a.send(snapshot_chunk(1, 2, 1 << 20))
        .expect("queued; dropped when framed");
    a.send(numbered(1, 2, 5, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 5);
    let m = a.metrics();
    assert_eq!(m.dropped_oversize, 1);
    assert_eq!(m.dropped_snapshot_chunks, 1);

    assert_eq!(
        a.send(numbered(1, 9, 0, Bytes::new())),
        Err(SendError::UnknownPeer { to: 9 })
    );
    assert_eq!(
        a.send(numbered(1, 1, 0, Bytes::new())),
        Err(SendError::UnknownPeer { to: 1 }),
        "a node does not send to itself"
    );
    assert_eq!(
        a.send(numbered(2, 2, 0, Bytes::new())),
        Err(SendError::NotFromThisNode { from: 2, id: 1 })
    );
    assert_eq!(a.metrics().dropped_unknown_peer, 3);
    // Nothing of the above reached 2 or disturbed the connection.
    a.send(numbered(1, 2, 6, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 6);
    assert_eq!(b.metrics().envelopes_refused, 0);
    assert_eq!(a.metrics().connects, 1);

    a.shutdown().await;
    assert_eq!(
        a.send(numbered(1, 2, 0, Bytes::new())),
        Err(SendError::Shutdown)
    );
    b.shutdown().await;
}

#[tokio::test]
async fn invalid_configs_are_refused_with_a_reason() {
    type Tweak = fn(&mut TransportConfig);
    let cases: [(Tweak, &str); 4] = [
        (|c| c.id = 0, "node id 0"),
        (|c| c.queue_len = 0, "queue_len"),
        (|c| c.max_frame_bytes = 10, "max_frame_bytes"),
        (|c| c.cluster_id = "x".repeat(5000), "cluster_id"),
    ];
    for (tweak, needle) in cases {
        let mut config = TransportConfig::new(1, CLUSTER, localhost(), BTreeMap::new());
        tweak(&mut config);
        let err = Transport::start(config).await.err().expect("refused");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    // A port already in use is reported with the address.
    let (a, _rx) = start(1, BTreeMap::new()).await;
    let err = Transport::start(TransportConfig::new(
        2,
        CLUSTER,
        a.local_addr(),
        BTreeMap::new(),
    ))
    .await
    .err();
    // SO_REUSEADDR does not allow two listeners on one port on Linux.
    let err = err.expect("second bind refused");
    assert!(
        err.to_string().contains(&a.local_addr().to_string()),
        "{err}"
    );
    a.shutdown().await;
}

/// Throughput figures, not a pass/fail test: `RAFTLOG_TRANSPORT_BENCH=1 cargo test
/// --release --lib transport::tests::throughput -- --nocapture`. Skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    if std::env::var_os("RAFTLOG_TRANSPORT_BENCH").is_none() {
        eprintln!("throughput: skipped (set RAFTLOG_TRANSPORT_BENCH=1 to run)");
        return;
    }
    let ((a, _a_rx), (b, mut b_rx)) = pair(|_| {}).await;
    for (label, entries, payload_bytes, n) in [
        ("heartbeat (no entries)", 0usize, 0usize, 300_000u64),
        ("1 entry x 100 B", 1, 100, 300_000),
        ("16 entries x 100 B", 16, 100, 100_000),
        ("1 entry x 4 KiB", 1, 4096, 50_000),
    ] {
        let payload = Bytes::from(vec![0x5au8; payload_bytes]);
        let make = move |seq: u64| Envelope {
            from: 1,
            to: 2,
            message: Message::AppendEntries {
                term: 3,
                prev_log_index: seq,
                prev_log_term: 3,
                entries: (0..entries as u64)
                    .map(|i| Entry {
                        index: seq * 16 + i,
                        term: 3,
                        kind: EntryKind::Normal,
                        payload: payload.clone(),
                    })
                    .collect(),
                leader_commit: seq,
                read_ctx: seq,
            },
        };
        let before = a.metrics();
        let started = Instant::now();
        let producer = {
            let a = a.clone();
            tokio::spawn(async move {
                for seq in 0..n {
                    let mut env = make(seq);
                    loop {
                        match a.send(env) {
                            Ok(()) => break,
                            Err(SendError::QueueFull { .. }) => {
                                tokio::task::yield_now().await;
                                env = make(seq);
                            }
                            Err(e) => panic!("send failed: {e}"),
                        }
                    }
                }
            })
        };
        let mut received = 0u64;
        while received < n {
            let env = tokio::time::timeout(WAIT, b_rx.recv())
                .await
                .expect("throughput stalled")
                .expect("channel open");
            assert_eq!(seq_of(&env), received);
            received += 1;
        }
        producer.await.expect("producer");
        let elapsed = started.elapsed().as_secs_f64();
        let after = a.metrics();
        let bytes = after.sent_bytes - before.sent_bytes;
        let batches = after.write_batches - before.write_batches;
        eprintln!(
            "throughput {label}: {:.0} msgs/s, {:.1} MB/s, {:.1} frames/write",
            n as f64 / elapsed,
            bytes as f64 / elapsed / 1e6,
            n as f64 / batches.max(1) as f64
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_inbound_connection_from_a_peer_replaces_the_older_one() {
    let (b, mut b_rx) = start(2, BTreeMap::from([(1, dead_addr()), (3, dead_addr())])).await;
    let addr = b.local_addr();
    let mut older = raw_peer(addr, 1, 2).await;
    let mut other_peer = raw_peer(addr, 3, 2).await;
    let mut newer = raw_peer(addr, 1, 2).await;
    assert_closed_by_peer(&mut older, "a newer connection from the same peer").await;
    eventually("replacement counted", || b.metrics().inbound_replaced == 1).await;
    // The newer connection, and the other peer's, still deliver.
    let mut buf = Vec::new();
    encode_frame(&numbered(1, 2, 7, Bytes::new()), 1 << 20, &mut buf).expect("encode");
    newer.write_all(&buf).await.expect("write");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 7);
    let mut buf = Vec::new();
    encode_frame(&numbered(3, 2, 8, Bytes::new()), 1 << 20, &mut buf).expect("encode");
    other_peer.write_all(&buf).await.expect("write");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 8);
    assert_eq!(b.metrics().inbound_replaced, 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_before_its_body_is_read() {
    let max_frame_bytes = 64 << 10;
    let (b, _b_rx) = start_with(
        2,
        CLUSTER,
        localhost(),
        BTreeMap::from([(1, dead_addr())]),
        |c| {
            c.max_frame_bytes = max_frame_bytes;
        },
    )
    .await;
    let mut stream = raw_peer(b.local_addr(), 1, 2).await;
    // A header announcing one byte over the limit, and no body: a node that waited for
    // the body (or reserved room for it) would keep the connection open.
    let mut header = Vec::new();
    header.extend_from_slice(&(max_frame_bytes + 1).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    stream.write_all(&header).await.expect("write");
    assert_closed_by_peer(&mut stream, "a frame length over max_frame_bytes").await;
    assert_eq!(b.metrics().garbage_frames, 1);
    assert_eq!(b.metrics().frames_received, 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_inbound_connection_is_closed_after_the_idle_timeout() {
    let (b, _b_rx) = start_with(
        2,
        CLUSTER,
        localhost(),
        BTreeMap::from([(1, dead_addr())]),
        |c| {
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let mut stream = raw_peer(b.local_addr(), 1, 2).await;
    let opened = Instant::now();
    assert_closed_by_peer(&mut stream, "300 ms without a frame").await;
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after only {elapsed:?}"
    );
    assert_eq!(b.metrics().inbound_idle_closed, 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_whose_idle_connection_was_closed_redials_and_delivers() {
    let ((a, _a_rx), (b, mut b_rx)) = pair(|c| c.idle_timeout = Duration::from_millis(200)).await;
    a.send(numbered(1, 2, 1, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 1);
    eventually("idle connection closed", || {
        b.metrics().inbound_idle_closed >= 1
    })
    .await;
    eventually("redialed", || a.metrics().connects >= 2).await;
    eventually("link up again", || {
        a.peer_statuses().iter().all(|p| p.connected)
    })
    .await;
    a.send(numbered(1, 2, 2, Bytes::new())).expect("queued");
    assert_eq!(seq_of(&recv_n(&mut b_rx, 1).await[0]), 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn the_frame_limit_fits_the_largest_append_entries_and_snapshot_chunk() {
    let message_bytes = 256 << 10;
    let limit = max_frame_bytes_for(message_bytes, message_bytes, message_bytes);
    // An AppendEntries just under max_msg_bytes of entries, plus one entry of the
    // largest size that crossed the limit.
    let small = Bytes::from(vec![7u8; 1000]);
    let mut entries: Vec<Entry> = (1..=(message_bytes / 1000))
        .map(|index| Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            payload: small.clone(),
        })
        .collect();
    entries.push(Entry {
        index: entries.len() as u64 + 1,
        term: 1,
        kind: EntryKind::Normal,
        payload: Bytes::from(vec![9u8; message_bytes as usize]),
    });
    let append = Envelope {
        from: 1,
        to: 2,
        message: Message::AppendEntries {
            term: u64::MAX,
            prev_log_index: u64::MAX,
            prev_log_term: u64::MAX,
            entries,
            leader_commit: u64::MAX,
            read_ctx: u64::MAX,
        },
    };
    let mut buf = Vec::new();
    encode_frame(&append, limit, &mut buf).expect("the largest append fits");
    let chunk = snapshot_chunk(1, 2, message_bytes as usize);
    encode_frame(&chunk, limit, &mut buf).expect("a snapshot chunk fits");
    // With the defaults (1 MiB each), far below the fixed 64 MiB it replaces.
    let default_limit = max_frame_bytes_for(1 << 20, 1 << 20, 1 << 20);
    assert!(
        (4 << 20..8 << 20).contains(&default_limit),
        "default frame limit {default_limit}"
    );
    assert_eq!(max_frame_bytes_for(u64::MAX, 1, 1), u32::MAX);
}

/// Waits until `transport` has a live connection to `peer`; returns its version.
async fn connected_version(transport: &Transport, peer: NodeId) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(version) = transport.peer_protocol(peer) {
            return version;
        }
        assert!(Instant::now() < deadline, "no connection to {peer}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn forward_frames_reach_the_sink_of_a_version_2_peer() {
    let ((a, _a_in), (b, _b_in)) = pair(|_| {}).await;
    let mut frames = b.take_forward_frames().expect("not taken yet");
    assert!(b.take_forward_frames().is_none(), "one receiver");
    assert_eq!(connected_version(&a, 2).await, PROTOCOL_VERSION);
    let forward = PeerFrame::Forward(Forward {
        request_id: 5,
        role: crate::security::Role::Write,
        command: Bytes::from_static(b"cmd"),
        timeout_ms: 100,
    });
    a.send_forward(2, forward.clone()).expect("queued");
    let got = tokio::time::timeout(WAIT, frames.recv())
        .await
        .expect("delivered in time");
    assert_eq!(got, Some((1, forward)));
    assert_eq!(a.metrics().forwards_sent, 1);
}

#[tokio::test]
async fn a_version_2_node_talks_raft_to_a_version_1_node_in_version_1() {
    let old = |config: &mut TransportConfig| config.protocol_version = 1;
    let (a, mut a_in) = start_with(1, CLUSTER, localhost(), BTreeMap::new(), old).await;
    let (b, mut b_in) = start(2, BTreeMap::from([(1, a.local_addr())])).await;
    a.set_peers(BTreeMap::from([(2, b.local_addr())]));
    assert_eq!(
        connected_version(&b, 1).await,
        1,
        "the new node redials in v1"
    );
    assert_eq!(
        connected_version(&a, 2).await,
        1,
        "the old node dials in v1"
    );
    b.send(numbered(2, 1, 1, Bytes::new())).expect("queued");
    a.send(numbered(1, 2, 2, Bytes::new())).expect("queued");
    let got = tokio::time::timeout(WAIT, a_in.recv())
        .await
        .expect("in time");
    assert_eq!(got.map(|e| seq_of(&e)), Some(1));
    let got = tokio::time::timeout(WAIT, b_in.recv())
        .await
        .expect("in time");
    assert_eq!(got.map(|e| seq_of(&e)), Some(2));
}

#[tokio::test]
async fn a_lost_connection_is_counted_for_its_peer() {
    let ((a, _a_in), (b, _b_in)) = pair(|_| {}).await;
    connected_version(&a, 2).await;
    connected_version(&b, 1).await;
    let mut events = a.link_loss_events();
    let before = a.link_losses(2);
    b.shutdown().await;
    tokio::time::timeout(WAIT, async {
        while a.link_losses(2) == before {
            events.changed().await.expect("transport alive");
        }
    })
    .await
    .expect("the loss is noticed");
}

/// A node sets up its forward server only after its transport accepts connections; a
/// follower may forward a write in between (it still takes a just-restarted node for the
/// leader). Such a forward must wait for the server, not vanish: a dropped forward is
/// answered "outcome unknown" only at the follower's timeout.
#[tokio::test]
async fn forwards_received_before_the_node_takes_them_wait_for_it() {
    let ((a, _a_in), (b, _b_in)) = pair(|_| {}).await;
    assert_eq!(connected_version(&a, 2).await, PROTOCOL_VERSION);
    let forward = PeerFrame::Forward(Forward {
        request_id: 9,
        role: crate::security::Role::Write,
        command: Bytes::from_static(b"cmd"),
        timeout_ms: 100,
    });
    a.send_forward(2, forward.clone()).expect("queued");
    tokio::time::timeout(WAIT, async {
        while b.metrics().frames_received == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("b read the forward");
    let mut frames = b.take_forward_frames().expect("not taken yet");
    let got = tokio::time::timeout(WAIT, frames.recv())
        .await
        .expect("delivered in time");
    assert_eq!(got, Some((1, forward)));
    assert_eq!(b.metrics().forwards_undelivered, 0);
}

/// A stopping leader waits with `flush` for its last answers to leave before it exits.
#[tokio::test]
async fn flush_returns_once_everything_queued_to_a_connected_peer_is_written() {
    let ((a, _a_in), (b, mut b_in)) = pair(|_| {}).await;
    assert_eq!(connected_version(&a, 2).await, PROTOCOL_VERSION);
    assert_eq!(a.peer_connects(2), 1);
    for seq in 1..=200 {
        a.send(numbered(1, 2, seq, Bytes::from(vec![7u8; 4096])))
            .expect("queued");
    }
    assert!(a.flush(WAIT).await, "written within {WAIT:?}");
    let metrics = a.metrics();
    assert_eq!(metrics.frames_sent, 200, "flush returned before the writes");
    for seq in 1..=200 {
        let got = tokio::time::timeout(WAIT, b_in.recv())
            .await
            .expect("in time");
        assert_eq!(got.map(|e| seq_of(&e)), Some(seq));
    }
    // A peer that is down is not waited for: its link drops what is queued to it.
    b.shutdown().await;
    tokio::time::timeout(WAIT, async {
        while a.peer_protocol(2).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a saw the link go down");
    let _ = a.send(numbered(1, 2, 201, Bytes::new()));
    let started = std::time::Instant::now();
    assert!(a.flush(WAIT).await);
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}
