//! An embedder uses `raftlog::node` and `raftlog::api` without the command line, which is
//! where the process's default rustls crypto provider used to be installed: reqwest (built
//! with `rustls-no-provider`) then panicked inside the node's bootstrap task and the API's
//! forwarding client, plain HTTP or not. The library must set up what it needs itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftlog::api::{self, ApiOptions};
use raftlog::kv::KvStore;
use raftlog::node::{self, NodeOptions};
use raftlog::storage::{Member, Membership};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

#[test]
fn a_node_embedded_without_the_cli_builds_its_http_clients_without_panicking() {
    let panicked = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&panicked);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.store(true, Ordering::SeqCst);
        default_hook(info);
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        // One voter of three, started alone with an empty data directory: it asks the
        // others over their client API whether the cluster exists (the bootstrap client).
        let mut membership = Membership::default();
        let mut own = None;
        for id in 1..=3u64 {
            let (raft_addr, api_addr) = (free_addr(), free_addr());
            if id == 1 {
                own = Some((raft_addr, api_addr));
            }
            let member = Member {
                raft_addr: raft_addr.to_string(),
                api_addr: api_addr.to_string(),
                voter: true,
            };
            membership.members.insert(id, member);
        }
        let (raft_addr, api_addr) = own.expect("node 1's addresses");
        let mut options = NodeOptions::new(1, dir.path().join("node-1"), raft_addr);
        options.cluster_id = "embedded".into();
        options.bootstrap = membership;
        let node = node::start(options, KvStore::new())
            .await
            .unwrap_or_else(|e| panic!("the node did not start: {e:?}"));
        let listener = api::server::bind(api_addr).expect("listen on the API address");
        tokio::spawn(api::serve(listener, node.clone(), ApiOptions::default()));
        // Long enough for the bootstrap task's first round of questions to its peers.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = reqwest_free_status(api_addr).await;
        assert!(
            status.contains("\"id\":1"),
            "GET /v1/status answered {status}"
        );
    });
    assert!(
        !panicked.load(Ordering::SeqCst),
        "a thread panicked while the embedded node ran (see the panic above)"
    );
}

/// `GET /v1/status` over a raw socket: the test must not install a provider itself by
/// building a client.
async fn reqwest_free_status(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("read the answer");
    answer
}
