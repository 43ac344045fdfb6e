//! Rule (issue 16): certificates rotate without a restart. Replacing the CA, certificate and
//! key files and sending SIGHUP makes a node use them for new peer connections, while a
//! write load runs; no acknowledged write is lost. The rotation goes the way SECURITY.md
//! tells operators: trust old and new CA, switch the certificates, drop the old CA.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    check_acknowledged_on_every_node, raftlog_bin, runtime, Cluster, ClusterSpec, RecordingLoad,
};

fn certs_init(nodes: u64, out: &Path) {
    let status = std::process::Command::new(raftlog_bin())
        .args(["certs", "init", "--nodes", &nodes.to_string(), "--out"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run raftlog certs init");
    assert!(status.success(), "raftlog certs init failed: {status}");
}

fn hang_up_all(cluster: &Cluster) {
    for id in cluster.running() {
        cluster.signal(id, libc::SIGHUP);
    }
}

#[test]
fn certificate_rotation_with_sighup_under_write_load_loses_nothing() {
    runtime().block_on(async {
        let cluster = Cluster::configure_with(
            ClusterSpec::default(),
            json!({"tls": {"ca": "certs/ca.pem", "cert": "certs/node-{id}.pem", "key": "certs/node-{id}-key.pem"}}),
        );
        let certs = cluster.dir.path().join("certs");
        let next = cluster.dir.path().join("certs-next");
        certs_init(3, &certs);
        certs_init(3, &next);
        for id in 1..=3 {
            cluster.spawn(id);
        }
        let cluster = Arc::new(cluster);
        cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster
            .put_eventually("before", "1", Duration::from_secs(15))
            .await;
        let load = RecordingLoad::start(&cluster, 8);
        tokio::time::sleep(Duration::from_secs(1)).await;

        // 1. Trust both CAs.
        let both = [
            std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
            std::fs::read_to_string(next.join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(certs.join("ca.pem"), both).unwrap();
        hang_up_all(&cluster);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 2. Switch every node to a certificate of the new CA.
        for id in 1..=3 {
            for file in [format!("node-{id}.pem"), format!("node-{id}-key.pem")] {
                std::fs::copy(next.join(&file), certs.join(&file)).unwrap();
            }
        }
        hang_up_all(&cluster);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 3. Drop the old CA.
        std::fs::copy(next.join("ca.pem"), certs.join("ca.pem")).unwrap();
        hang_up_all(&cluster);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in 1..=3 {
            let log = cluster.log_text(id);
            assert_eq!(
                log.matches("SIGHUP: reloaded the TLS certificate and key").count(),
                3,
                "node {id} did not reload three times:\n{log}"
            );
        }

        // New connections now need the new material on both ends: a follower restarted
        // trusts only the new CA and presents only a new certificate, so it rejoins only if
        // the others reloaded theirs.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = leader % 3 + 1;
        cluster.kill(follower);
        let log_before_restart = cluster.log_text(follower).len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.spawn(follower);
        let restarted = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let record = load.finish().await;
        assert!(
            record.unexpected.is_empty(),
            "unexpected answers: {:?}",
            record.unexpected
        );
        assert!(
            record.ack_times.iter().any(|at| *at > restarted),
            "no write was acknowledged after the rotation\n{}",
            cluster.logs_tail()
        );
        // Every acknowledged write reaches the restarted follower too: its links work.
        check_acknowledged_on_every_node(&cluster, &record.acknowledged, Duration::from_secs(30))
            .await;
        let log = cluster.log_text(follower)[log_before_restart..].to_string();
        assert!(
            !log.contains("TLS handshake failed"),
            "the restarted follower could not talk to its peers:\n{log}"
        );
    });
}
