//! Rules (issue 16): with `tls` in the cluster file, only a process holding a certificate
//! of the cluster's CA that names the node id it claims can speak on the peer port. A
//! certificate from another CA, a member's certificate used to claim another member's id,
//! and a TLS-less stranger are all refused before any Raft message reaches the core: the
//! follower's term, log and applied state do not change.

#[path = "peer_forgery/mod.rs"]
mod peer_forgery;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use peer_forgery::{assert_untouched, forge_append, handshakes_refused, metric, observe};
use raftlog::transport::codec::HandshakeStatus;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::{raftlog_bin, runtime, Cluster, ClusterSpec};
use tokio::net::TcpStream;

/// Runs `raftlog certs init` into `out`, as an operator would.
fn certs_init(nodes: u64, out: &Path) {
    let status = std::process::Command::new(raftlog_bin())
        .args(["certs", "init", "--nodes", &nodes.to_string(), "--out"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run raftlog certs init");
    assert!(status.success(), "raftlog certs init failed: {status}");
}

/// A three-node cluster with mutual TLS from `raftlog certs init`, written next to the config.
fn start_tls_cluster() -> Cluster {
    let cluster = Cluster::configure_with(
        ClusterSpec::default(),
        json!({"tls": {"ca": "certs/ca.pem", "cert": "certs/node-{id}.pem", "key": "certs/node-{id}-key.pem"}}),
    );
    certs_init(3, &cluster.dir.path().join("certs"));
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster
}

/// Dials `target` over TLS, trusting `ca` and presenting `cert`/`key`.
async fn tls_dial(
    target: SocketAddr,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = TcpStream::connect(target).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
}

struct Scene {
    cluster: Cluster,
    leader: u64,
    follower: u64,
    other: u64,
    target: SocketAddr,
}

async fn scene() -> Scene {
    let cluster = start_tls_cluster();
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    // A write commits, so the peers do talk to each other over mutual TLS.
    cluster
        .put_eventually("before", "1", Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let follower = leader % 3 + 1;
    let other = 6 - leader - follower;
    let target = cluster.nodes[&follower].raft_addr.parse().unwrap();
    Scene {
        cluster,
        leader,
        follower,
        other,
        target,
    }
}

#[test]
fn peer_with_a_certificate_from_another_ca_is_refused() {
    runtime().block_on(async {
        let s = scene().await;
        let elsewhere = tempfile::tempdir().unwrap();
        certs_init(3, elsewhere.path());
        let before = observe(&s.cluster, s.follower).await;
        let refused_before = metric(&s.cluster, s.follower, "transport_tls_refused_total").await;
        let forged_term = before.term + 1000;
        let certs = s.cluster.dir.path().join("certs");
        // The stranger trusts the real CA (so it would accept the follower) but presents
        // the leader's id in a certificate of its own CA.
        let dialed = tls_dial(
            s.target,
            &format!("raftlog-node-{}", s.follower),
            &certs.join("ca.pem"),
            &elsewhere.path().join(format!("node-{}.pem", s.leader)),
            &elsewhere.path().join(format!("node-{}-key.pem", s.leader)),
        )
        .await;
        if let Ok(stream) = dialed {
            // TLS 1.3: the client finishes first; the refusal shows on the next read.
            let verdict = forge_append(stream, s.leader, s.follower, &before, forged_term).await;
            assert_ne!(verdict, Some(HandshakeStatus::Accepted));
        }
        assert_untouched(&s.cluster, s.follower, &before, forged_term).await;
        assert!(
            metric(&s.cluster, s.follower, "transport_tls_refused_total").await > refused_before
        );
        let log = s.cluster.log_text(s.follower);
        assert!(
            log.contains("refused a peer connection: TLS handshake failed"),
            "no log line names the refusal:\n{log}"
        );
    });
}

#[test]
fn valid_node_certificate_used_with_another_node_id_is_refused() {
    runtime().block_on(async {
        let s = scene().await;
        let before = observe(&s.cluster, s.follower).await;
        let refused_before = handshakes_refused(&s.cluster, s.follower).await;
        let forged_term = before.term + 1000;
        let certs = s.cluster.dir.path().join("certs");
        // A genuine member certificate (node `other`'s), used to claim to be the leader.
        let stream = tls_dial(
            s.target,
            &format!("raftlog-node-{}", s.follower),
            &certs.join("ca.pem"),
            &certs.join(format!("node-{}.pem", s.other)),
            &certs.join(format!("node-{}-key.pem", s.other)),
        )
        .await
        .expect("a member certificate completes the TLS handshake");
        let verdict = forge_append(stream, s.leader, s.follower, &before, forged_term).await;
        assert_eq!(verdict, Some(HandshakeStatus::WrongCertificate));
        assert_untouched(&s.cluster, s.follower, &before, forged_term).await;
        assert!(handshakes_refused(&s.cluster, s.follower).await > refused_before);
        // Writes still commit: the refusal did not disturb the real peers.
        s.cluster
            .put_eventually("after", "2", Duration::from_secs(10))
            .await;
    });
}

#[test]
fn forged_append_entries_from_a_tls_less_stranger_never_reaches_the_core() {
    runtime().block_on(async {
        let s = scene().await;
        let before = observe(&s.cluster, s.follower).await;
        let refused_before = metric(&s.cluster, s.follower, "transport_tls_refused_total").await;
        let forged_term = before.term + 1000;
        let stranger = TcpStream::connect(s.target).await.unwrap();
        // The plaintext handshake a member would have sent before TLS, from the member's
        // own address (127.0.0.1): only TLS can tell it apart now.
        let verdict = forge_append(stranger, s.leader, s.follower, &before, forged_term).await;
        assert_ne!(verdict, Some(HandshakeStatus::Accepted));
        assert_untouched(&s.cluster, s.follower, &before, forged_term).await;
        assert!(
            metric(&s.cluster, s.follower, "transport_tls_refused_total").await > refused_before
        );
        let metrics = s
            .cluster
            .client
            .get(s.cluster.url(s.follower, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("raftlog_tls_cert_not_after_seconds "),
            "no certificate expiry in /metrics:\n{metrics}"
        );
    });
}
