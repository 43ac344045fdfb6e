//! Helpers of the peer-port security tests (issue 16): look at a follower's log, term and
//! applied state, pose as a member on its peer port, and check the forgery changed nothing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::Cluster;
use raftlog::raft::{Entry, EntryKind, Envelope, Message};
use raftlog::transport::codec::{
    self, Handshake, HandshakeReply, HandshakeStatus, HANDSHAKE_REPLY_BYTES, PROTOCOL_VERSION,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a forger learns from the follower's own pages, so its AppendEntries would match.
pub struct Observed {
    pub term: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

pub async fn observe(cluster: &Cluster, id: u64) -> Observed {
    let status = cluster.status(id).await.expect("follower answers status");
    let last_log_index = status["last_log_index"].as_u64().unwrap();
    let url = cluster.url(id, &format!("/v1/log?from={last_log_index}&limit=1"));
    let log: Value = cluster
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Observed {
        term: status["term"].as_u64().unwrap(),
        last_log_index,
        last_log_term: log[0]["term"].as_u64().unwrap_or(0),
        commit_index: status["commit_index"].as_u64().unwrap(),
        applied_index: status["applied_index"].as_u64().unwrap(),
    }
}

/// Dials `target` from `source_ip`.
pub async fn connect_from(source_ip: &str, target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .expect("bind a second loopback address (Linux routes all of 127/8 to lo)");
    socket
        .connect(target)
        .await
        .expect("connect to the peer port")
}

/// On `stream`, claims to be member `claimed`, and sends a forged AppendEntries at
/// `forged_term` whatever the verdict. Returns the verdict, if any came.
pub async fn forge_append<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    claimed: u64,
    to: u64,
    seen: &Observed,
    forged_term: u64,
) -> Option<HandshakeStatus> {
    let mut hello = Vec::new();
    Handshake {
        version: PROTOCOL_VERSION,
        cluster_id: "test-cluster".into(),
        from: claimed,
        to,
    }
    .encode(&mut hello);
    // A TLS acceptor may have refused the connection already: a failed write is the point.
    let _ = stream.write_all(&hello).await;
    let _ = stream.flush().await;
    let mut reply = [0u8; HANDSHAKE_REPLY_BYTES];
    let verdict =
        match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply)).await {
            Ok(Ok(_)) => HandshakeReply::decode(&reply).ok().map(|r| r.status),
            _ => None,
        };
    let forged = Envelope {
        from: claimed,
        to,
        message: Message::AppendEntries {
            term: forged_term,
            prev_log_index: seen.last_log_index,
            prev_log_term: seen.last_log_term,
            entries: vec![Entry {
                index: seen.last_log_index + 1,
                term: forged_term,
                kind: EntryKind::Normal,
                payload: bytes::Bytes::from_static(b"forged by a stranger"),
            }],
            leader_commit: seen.last_log_index + 1,
            read_ctx: 0,
        },
    };
    let mut frame = Vec::new();
    codec::encode_frame(&forged, 64 << 20, &mut frame).unwrap();
    // The acceptor may already have closed the connection: a failed write is the point.
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    verdict
}

pub async fn handshakes_refused(cluster: &Cluster, id: u64) -> u64 {
    metric(cluster, id, "transport_handshakes_refused_total").await
}

/// A counter of node `id`'s `/metrics`.
pub async fn metric(cluster: &Cluster, id: u64, name: &str) -> u64 {
    let url = cluster.url(id, "/metrics");
    let text = cluster
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(&format!("raftlog_{name} "))
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The forged entry changed nothing the follower holds.
pub async fn assert_untouched(
    cluster: &Cluster,
    follower: u64,
    before: &Observed,
    forged_term: u64,
) {
    // Give a message that did get through time to be stepped, persisted and applied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = observe(cluster, follower).await;
    assert!(
        after.term < forged_term,
        "the forged term {forged_term} reached the core: the follower's term is {}\n{}",
        after.term,
        cluster.logs_tail()
    );
    let url = cluster.url(
        follower,
        &format!("/v1/log?from={}&limit=1000", before.last_log_index + 1),
    );
    let log: Value = cluster
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for entry in log.as_array().into_iter().flatten() {
        assert_ne!(
            entry["term"].as_u64(),
            Some(forged_term),
            "the forged entry is in the follower's log: {entry}"
        );
    }
    assert!(after.commit_index >= before.commit_index);
    assert!(after.applied_index >= before.applied_index);
    // Nothing was written meanwhile, so only a forged entry could have moved these.
    assert_eq!(
        (after.last_log_index, after.applied_index),
        (before.last_log_index, before.applied_index),
        "the follower's log or applied state moved with no client write"
    );
}
