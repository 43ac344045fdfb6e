//! `raftlog serve --bind-all` listens on every interface at the configured ports, while
//! peers and clients keep being told the configured addresses (the Kubernetes manifests in
//! `deploy/kubernetes/` rely on both). 127.0.0.2 is a local address that no configured
//! address names: a node answers there only if it bound the wildcard.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{runtime, Cluster, ClusterSpec};

/// The same port on 127.0.0.2.
fn other_loopback(addr: &str) -> SocketAddr {
    let port = addr.parse::<SocketAddr>().expect("a socket address").port();
    SocketAddr::from(([127, 0, 0, 2], port))
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn bind_all_listens_on_every_interface_and_advertises_the_configured_addresses() {
    let rt = runtime();
    let cluster = Cluster::configure(ClusterSpec::default());
    cluster.spawn_with_args(1, &["--bind-all"]);
    cluster.spawn(2);
    cluster.spawn(3);
    rt.block_on(cluster.wait_for_leader(Duration::from_secs(10)));
    let index = rt.block_on(cluster.put_eventually("k", "v", Duration::from_secs(10)));
    assert!(index["index"].as_u64().is_some(), "{index}");

    let node1 = &cluster.nodes[&1];
    let node2 = &cluster.nodes[&2];
    assert!(
        answers(other_loopback(&node1.api_addr)) && answers(other_loopback(&node1.raft_addr)),
        "node 1 (--bind-all) does not answer on 127.0.0.2 at its ports\n{}",
        cluster.logs_tail()
    );
    // The control: without the flag a node binds only its configured address.
    assert!(
        !answers(other_loopback(&node2.api_addr)),
        "node 2 answers on 127.0.0.2 without --bind-all: the check above proves nothing"
    );
    // Through the wildcard, node 1 serves the data, and names its configured addresses.
    let url = format!("http://{}/v1/members", other_loopback(&node1.api_addr));
    let members: serde_json::Value = rt.block_on(async {
        cluster
            .client
            .get(url)
            .send()
            .await
            .expect("node 1 answers")
            .json()
            .await
            .expect("JSON")
    });
    let text = members.to_string();
    assert!(
        text.contains(&node1.api_addr) && text.contains(&node1.raft_addr),
        "the membership must keep node 1's configured addresses: {text}"
    );
    assert!(
        !text.contains("0.0.0.0"),
        "the wildcard leaked into the membership: {text}"
    );
}
