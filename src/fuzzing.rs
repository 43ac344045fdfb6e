//! Fuzz entry points of the raftlog crate, one per cargo-fuzz target in `fuzz/`, shared
//! with the corpus replay test `tests/fuzz_corpus.rs` (every committed seed and regression
//! runs on stable, so a finding stays fixed). The storage crate's targets (WAL recovery,
//! WAL model, snapshot reader and receiver) live in `storage::fuzzing`.
//!
//! Each function takes arbitrary bytes and panics only when the property it checks is
//! broken; an input that is not even shaped like the thing under test is still run.
#![doc(hidden)]

use std::path::Path;

use crate::config::ClusterConfig;
use crate::transport::codec::{
    decode_body, decode_frame, decode_peer_body, decode_peer_frame, encode_frame,
    encode_peer_frame, FrameHeader, Handshake, HandshakeReply, PeerFrame, FRAME_HEADER_BYTES,
    HANDSHAKE_FIXED_BYTES, HANDSHAKE_REPLY_BYTES, PROTOCOL_VERSION,
};

pub use crate::api::fuzzing::http_request;
pub use crate::raft::fuzzing::run as core_step;

/// Frame size limits the peer codec target picks from: tiny ones so the size check is
/// reached, the default so whole snapshot chunks fit.
const FRAME_LIMITS: [u32; 4] = [0, 64, 4096, 64 << 20];

/// The peer transport's decoders on what a hostile or broken peer could send. The first
/// byte picks what the rest is:
///
/// - `0`: a handshake. Accepted ones re-encode to the same bytes.
/// - `1`: a handshake reply. Accepted ones survive an encode/decode round trip.
/// - `2`: a stream of frames, decoded as the connection's read loop does (`decode_frame`
///   until it wants more bytes or refuses), under the frame limit of the second byte.
/// - `3`: one frame body under a header computed for it, so mutations reach bincode
///   instead of stopping at the CRC.
/// - `4`: the same for a protocol version 2 or later body (a [`PeerFrame`]: a Raft
///   envelope, a forwarded write or its answer, or a read index request or its answer,
///   issue 14). Accepted ones survive a round trip.
///
/// Decoders answer `Ok` or their typed error, never panic; every envelope they return
/// encodes back into a frame that decodes to the same envelope.
pub fn peer_codec(data: &[u8]) {
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    match mode % 5 {
        0 => handshake(rest),
        1 => {
            if let Some(bytes) = rest.first_chunk::<HANDSHAKE_REPLY_BYTES>() {
                if let Ok(reply) = HandshakeReply::decode(bytes) {
                    assert_eq!(
                        HandshakeReply::decode(&reply.encode()),
                        Ok(reply),
                        "handshake reply does not round-trip"
                    );
                }
            }
        }
        2 => {
            let (limit, stream) = rest.split_first().unwrap_or((&0, &[]));
            frames(stream, FRAME_LIMITS[usize::from(limit % 4)]);
        }
        3 => {
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let header = FrameHeader {
                len,
                crc: crc32fast::hash(rest),
            };
            if let Ok(envelope) = decode_body(&header, rest) {
                round_trip(&envelope);
            }
        }
        _ => {
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let header = FrameHeader {
                len,
                crc: crc32fast::hash(rest),
            };
            if let Ok(frame) = decode_peer_body(&header, rest, PROTOCOL_VERSION) {
                peer_frame_round_trip(&frame);
            }
        }
    }
}

fn handshake(bytes: &[u8]) {
    if let Some(fixed) = bytes.first_chunk::<HANDSHAKE_FIXED_BYTES>() {
        // The acceptor reads the fixed part, then exactly as many bytes as it claims.
        if let Ok(remaining) = Handshake::remaining_len(fixed) {
            assert!(
                remaining <= crate::transport::codec::CLUSTER_ID_BYTES_MAX + 4,
                "a handshake may claim {remaining} more bytes"
            );
        }
    }
    if let Ok(hello) = Handshake::decode(bytes) {
        let mut again = Vec::new();
        hello.encode(&mut again);
        assert!(
            again == bytes,
            "an accepted handshake does not re-encode to its bytes"
        );
    }
}

fn frames(mut stream: &[u8], max_frame_bytes: u32) {
    loop {
        match decode_frame(stream, max_frame_bytes) {
            Ok(Some((envelope, used))) => {
                assert!(
                    used >= FRAME_HEADER_BYTES && used <= stream.len(),
                    "a frame of {used} bytes in a buffer of {}",
                    stream.len()
                );
                assert!(
                    used - FRAME_HEADER_BYTES <= max_frame_bytes as usize,
                    "a frame body over the limit {max_frame_bytes} was accepted"
                );
                round_trip(&envelope);
                stream = &stream[used..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fn round_trip(envelope: &crate::raft::Envelope) {
    let mut frame = Vec::new();
    encode_frame(envelope, u32::MAX, &mut frame)
        .unwrap_or_else(|e| panic!("a decoded envelope does not encode: {e}"));
    match decode_frame(&frame, u32::MAX) {
        Ok(Some((again, used))) => {
            assert_eq!(used, frame.len(), "re-encoded frame length");
            assert!(again == *envelope, "envelope does not round-trip");
        }
        other => panic!("a re-encoded envelope does not decode: {other:?}"),
    }
}

fn peer_frame_round_trip(frame: &PeerFrame) {
    let mut bytes = Vec::new();
    encode_peer_frame(frame, PROTOCOL_VERSION, u32::MAX, &mut bytes)
        .unwrap_or_else(|e| panic!("a decoded peer frame does not encode: {e}"));
    match decode_peer_frame(&bytes, PROTOCOL_VERSION, u32::MAX) {
        Ok(Some((again, used))) => {
            assert_eq!(used, bytes.len(), "re-encoded frame length");
            assert!(again == *frame, "peer frame does not round-trip");
        }
        other => panic!("a re-encoded peer frame does not decode: {other:?}"),
    }
}

/// `data` as the cluster file `config.json`: either a config that keeps every invariant
/// of [`ClusterConfig`] and survives `to_json` (what `raftlog cluster` writes) unchanged,
/// or an error whose message names the file.
pub fn config_json(data: &[u8]) {
    let path = Path::new("fuzz/config.json");
    // `ClusterConfig::load` reads the file as UTF-8 and refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClusterConfig::parse(text, path) {
        Ok(config) => {
            assert!(!config.nodes().is_empty(), "a config without nodes passed");
            assert!(!config.nodes().contains_key(&0), "node id 0 passed");
            let mut addrs: Vec<_> = config
                .nodes()
                .values()
                .flat_map(|a| [a.raft_addr, a.api_addr])
                .collect();
            let count = addrs.len();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), count, "two members share an address");
            let (lo, hi) = config.election_timeout_ms();
            assert!(
                config.heartbeat_interval_ms() < lo && lo < hi,
                "heartbeat {} ms, election timeout {lo}..{hi} ms passed",
                config.heartbeat_interval_ms()
            );
            let json = config.to_json();
            let again = ClusterConfig::parse(&json, path)
                .unwrap_or_else(|e| panic!("to_json of a valid config fails: {e}\n{json}"));
            assert_eq!(again, config, "config does not round-trip through to_json");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz/config.json: "),
                "an error that does not name the file: {message}"
            );
        }
    }
}

/// Committed seeds of this crate's targets, as (target, file name, bytes): real
/// handshakes, frames, cluster files and requests, so the fuzzer starts deep.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::raft::{Entry, EntryKind, Envelope, Membership, Message, SnapshotMeta};
    use crate::transport::codec::HandshakeStatus;
    use bytes::Bytes;

    let mut out = Vec::new();
    for (name, cluster_id) in [("demo", "raftlog-demo"), ("empty-id", ""), ("long-id", "c")] {
        let cluster_id = if name == "long-id" {
            cluster_id.repeat(1024)
        } else {
            cluster_id.to_string()
        };
        let mut bytes = vec![0];
        Handshake {
            version: PROTOCOL_VERSION,
            cluster_id,
            from: 2,
            to: 1,
        }
        .encode(&mut bytes);
        out.push(("peer_codec", format!("handshake-{name}"), bytes));
    }
    for status in [HandshakeStatus::Accepted, HandshakeStatus::WrongReceiver] {
        let mut bytes = vec![1];
        bytes.extend(
            HandshakeReply {
                version: PROTOCOL_VERSION,
                status,
            }
            .encode(),
        );
        out.push(("peer_codec", format!("reply-{status:?}"), bytes));
    }
    let membership = Membership::single_voter(1, "127.0.0.1:7001", "127.0.0.1:8001");
    let entry = |index: u64, kind: EntryKind, payload: &[u8]| Entry {
        index,
        term: 3,
        kind,
        payload: Bytes::copy_from_slice(payload),
    };
    let messages = [
        Message::PreVote {
            term: 4,
            last_log_index: 10,
            last_log_term: 3,
        },
        Message::RequestVote {
            term: 4,
            last_log_index: 10,
            last_log_term: 3,
            leadership_transfer: true,
        },
        Message::RequestVoteResponse {
            term: u64::MAX,
            granted: true,
        },
        Message::AppendEntries {
            term: 3,
            prev_log_index: 9,
            prev_log_term: 2,
            entries: vec![
                entry(10, EntryKind::Normal, b"put k v"),
                entry(11, EntryKind::Noop, b""),
                entry(12, EntryKind::Membership, &[1, 2, 3]),
            ],
            leader_commit: 9,
            read_ctx: 5,
        },
        Message::AppendEntriesResponse {
            term: 3,
            success: false,
            match_index: 0,
            conflict_term: 2,
            conflict_index: 7,
            read_ctx: 5,
        },
        Message::InstallSnapshot {
            term: 5,
            meta: SnapshotMeta {
                last_index: 1000,
                last_term: 4,
                membership,
            },
            offset: 4096,
            data: Bytes::from((0..300).map(|i| i as u8).collect::<Vec<u8>>()),
            done: false,
        },
        Message::InstallSnapshotResponse {
            term: 5,
            snapshot_last_index: 1000,
            next_offset: 4396,
            success: true,
        },
        Message::TimeoutNow { term: 6 },
    ];
    let mut stream = vec![2, 3];
    for (i, message) in messages.into_iter().enumerate() {
        let envelope = Envelope {
            from: 2,
            to: 1,
            message,
        };
        let mut frame = Vec::new();
        // Bounded by construction: a few hundred bytes.
        let _ = encode_frame(&envelope, u32::MAX, &mut frame);
        stream.extend_from_slice(&frame);
        let mut body = vec![3];
        body.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
        out.push(("peer_codec", format!("body-{i}"), body));
        let mut single = vec![2, 3];
        single.extend_from_slice(&frame);
        out.push(("peer_codec", format!("frame-{i}"), single));
    }
    out.push(("peer_codec", "stream".into(), stream));
    for (name, frame) in forward_seed_frames() {
        let mut bytes = Vec::new();
        // Bounded by construction: a few dozen bytes.
        let _ = encode_peer_frame(&frame, PROTOCOL_VERSION, u32::MAX, &mut bytes);
        let mut body = vec![4];
        body.extend_from_slice(&bytes[FRAME_HEADER_BYTES..]);
        out.push(("peer_codec", format!("v2-{name}"), body));
    }

    let configs = [
        ("demo", include_str!("../config.json").to_string()),
        (
            "all-fields",
            r#"{"cluster_id":"c","nodes":{"1":{"raft_addr":"127.0.0.1:7001","api_addr":"127.0.0.1:8001"},"2":{"raft_addr":"[::1]:7002","api_addr":"[::1]:8002"}},"data_dir":"/var/lib/raftlog","heartbeat_interval_ms":20,"election_timeout_ms":[100,200],"snapshot_threshold":1,"snapshot_trailing_entries":0,"wal_segment_bytes":1048576,"promote_lag_entries":10,"promote_stable_ms":500}"#.to_string(),
        ),
        (
            "duplicate-address",
            r#"{"cluster_id":"c","nodes":{"1":{"raft_addr":"127.0.0.1:7001","api_addr":"127.0.0.1:7001"}},"data_dir":"d"}"#.to_string(),
        ),
        (
            "heartbeat-too-slow",
            r#"{"cluster_id":"c","nodes":{"1":{"raft_addr":"127.0.0.1:7001","api_addr":"127.0.0.1:8001"}},"data_dir":"d","heartbeat_interval_ms":300,"election_timeout_ms":[150,300]}"#.to_string(),
        ),
        (
            "bad-types",
            r#"{"cluster_id":7,"nodes":{"0":{"raft_addr":"nowhere"}},"data_dir":null,"extra":1}"#.to_string(),
        ),
        ("truncated", r#"{"cluster_id":"c","nodes":{"1":{"raft_"#.to_string()),
    ];
    for (name, text) in configs {
        out.push(("config_json", name.to_string(), text.into_bytes()));
    }

    let requests: [(&str, &[u8]); 12] = [
        ("plain-key", b"user/42"),
        ("percent-key", b"a%2Fb%00%ff?consistency=lease"),
        ("stale-read", b"k?consistency=stale"),
        ("bad-consistency", b"k?consistency=eventual"),
        ("bad-percent", b"abc%2"),
        ("log-query", b"k?from=3&limit=10"),
        ("members-query", b"k?force=true&wait=0"),
        ("isolate-query", b"k?on=true"),
        ("request-id", b"client-a:42"),
        ("request-id-colons", b"a:b:18446744073709551615"),
        (
            "add-member",
            br#"{"id":4,"raft_addr":"127.0.0.1:7004","api_addr":"127.0.0.1:8004","voter":false}"#,
        ),
        ("long-key", &[b'x'; 1025]),
    ];
    for (name, bytes) in requests {
        out.push(("http_request", name.to_string(), bytes.to_vec()));
    }

    // The core's workload decodes any bytes; a few deterministic ones of several lengths.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for len in [16usize, 64, 256, 1024, 4096] {
        let bytes = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        out.push(("core_step", format!("xorshift-{len}"), bytes));
    }
    out
}

/// One protocol version 2 or 3 frame of each kind issue 14 added, for the seed corpus.
fn forward_seed_frames() -> Vec<(&'static str, PeerFrame)> {
    use crate::raft::{Envelope, Message};
    use crate::transport::codec::{
        Forward, ForwardOutcome, ForwardReply, ReadConsistency, ReadIndexOutcome, ReadIndexReply,
        ReadIndexRequest,
    };
    use bytes::Bytes;
    let reply = |request_id, outcome| {
        PeerFrame::ForwardReply(ForwardReply {
            request_id,
            outcome,
        })
    };
    vec![
        (
            "forward",
            PeerFrame::Forward(Forward {
                request_id: 1,
                role: crate::security::Role::Admin,
                command: Bytes::from_static(b"\x00\x01put k v"),
                timeout_ms: 5000,
            }),
        ),
        (
            "reply-applied",
            reply(
                1,
                ForwardOutcome::Applied {
                    index: 42,
                    applied: crate::session::Applied::Duplicate {
                        response: vec![1, 2],
                        index: 40,
                    },
                },
            ),
        ),
        (
            "reply-not-leader",
            reply(
                2,
                ForwardOutcome::NotLeader {
                    leader_hint: Some(3),
                },
            ),
        ),
        (
            "reply-unknown",
            reply(
                3,
                ForwardOutcome::Unknown {
                    message: "timed out".into(),
                },
            ),
        ),
        (
            "reply-forbidden",
            reply(
                4,
                ForwardOutcome::Forbidden {
                    role: crate::security::Role::Read,
                },
            ),
        ),
        (
            "read-index",
            PeerFrame::ReadIndex(ReadIndexRequest {
                request_id: 5,
                consistency: ReadConsistency::Lease,
                timeout_ms: 5000,
            }),
        ),
        (
            "read-index-reply",
            PeerFrame::ReadIndexReply(ReadIndexReply {
                request_id: 5,
                outcome: ReadIndexOutcome::Index { index: 42 },
            }),
        ),
        (
            "read-index-not-leader",
            PeerFrame::ReadIndexReply(ReadIndexReply {
                request_id: 6,
                outcome: ReadIndexOutcome::NotLeader {
                    leader_hint: Some(3),
                },
            }),
        ),
        (
            "raft",
            PeerFrame::Raft(Envelope {
                from: 2,
                to: 1,
                message: Message::TimeoutNow { term: 6 },
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_passes_its_target() {
        for (target, name, bytes) in seeds() {
            match target {
                "peer_codec" => peer_codec(&bytes),
                "config_json" => config_json(&bytes),
                "http_request" => http_request(&bytes),
                "core_step" => {
                    core_step(&bytes);
                }
                other => panic!("seed {name} of an unknown target {other}"),
            }
        }
    }

    #[test]
    fn seed_frames_decode_and_seed_configs_include_a_valid_one() {
        let seeds = seeds();
        let frame = &seeds
            .iter()
            .find(|(t, n, _)| *t == "peer_codec" && n == "frame-3")
            .expect("frame seed")
            .2;
        assert!(matches!(decode_frame(&frame[2..], u32::MAX), Ok(Some(_))));
        let demo = &seeds
            .iter()
            .find(|(t, n, _)| *t == "config_json" && n == "demo")
            .expect("demo config")
            .2;
        let text = std::str::from_utf8(demo).expect("utf-8");
        assert!(ClusterConfig::parse(text, Path::new("x")).is_ok());
    }
}
