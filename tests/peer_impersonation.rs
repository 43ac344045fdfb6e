//! Rule (issue 16): a process that is not a member cannot pose as one on the peer port.
//! Without TLS, a peer's claimed node id must match the address it connects from, when the
//! member's `raft_addr` is an IP address; the refusal comes before any Raft message reaches
//! the core, so a forged AppendEntries with a higher term changes nothing: not the
//! follower's term, not its log, not its applied state.

#[path = "peer_forgery/mod.rs"]
mod peer_forgery;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use peer_forgery::{assert_untouched, connect_from, forge_append, handshakes_refused, observe};
use raftlog::transport::codec::HandshakeStatus;
use serde_json::json;
use support::{runtime, Cluster, ClusterSpec};

#[test]
fn plaintext_peer_claiming_a_member_id_from_another_address_is_refused() {
    runtime().block_on(async {
        // Plaintext even under RAFTLOG_TEST_TLS=1: this is the rule without TLS.
        let cluster = Cluster::start_with_config(ClusterSpec::default(), json!({"tls": null}));
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("before", "1", Duration::from_secs(10))
            .await;
        let follower = leader % 3 + 1;
        // Let the follower apply the write before taking its picture.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = observe(&cluster, follower).await;
        let refused_before = handshakes_refused(&cluster, follower).await;
        let forged_term = before.term + 1000;
        let target: SocketAddr = cluster.nodes[&follower].raft_addr.parse().unwrap();

        // Every member's raft_addr is 127.0.0.1; 127.0.0.2 is the same host but not theirs.
        let stranger = connect_from("127.0.0.2", target).await;
        let verdict = forge_append(stranger, leader, follower, &before, forged_term).await;
        // A refusal, or a connection closed without one: anything but Accepted.
        assert_ne!(
            verdict,
            Some(HandshakeStatus::Accepted),
            "a stranger claiming member {leader} from 127.0.0.2 was accepted"
        );
        assert_untouched(&cluster, follower, &before, forged_term).await;
        assert!(handshakes_refused(&cluster, follower).await > refused_before);
        let log = cluster.log_text(follower);
        assert!(
            log.contains("refused a peer connection") && log.contains("127.0.0.2"),
            "no log line names the refused stranger:\n{log}"
        );
        // The cluster itself still works.
        cluster
            .put_eventually("after", "2", Duration::from_secs(10))
            .await;
    });
}
