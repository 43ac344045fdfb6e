//! Rule: idle client connections cannot take a node out of service. However many
//! sockets sit open on a node's API port, it keeps file descriptors for its peers and its
//! storage, so writes through it still commit and a term change does not stop it.
//!
//! The scenario of issue 12: a follower started with the systemd default soft
//! `RLIMIT_NOFILE` of 1024 and 1,100 idle connections to its API port. Before the fix
//! every write sent through it failed ("accepting a peer connection failed: Too many open
//! files") and the next term change could fail the stable store with EMFILE and stop it.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{runtime, Cluster, ClusterSpec};

/// The systemd default soft limit, and a container's hard limit.
const FD_LIMIT: u64 = 1024;
/// More than `FD_LIMIT`: enough to exhaust it without a cap.
const IDLE_CONNECTIONS: usize = 1100;

/// Raises this test process's own soft limit, so that it can hold the idle connections.
fn raise_own_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a stack value.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur as usize > IDLE_CONNECTIONS + 512,
        "this test needs a hard RLIMIT_NOFILE above {} (have {})",
        IDLE_CONNECTIONS + 512,
        limit.rlim_cur
    );
}

fn own_hard_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a stack value.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max
}

/// Opens `count` TCP connections to `addr` that never send a byte. Connections the node
/// has not accepted yet still complete in the kernel's backlog (the node asks for 1024).
fn open_idle_connections(addr: &str, count: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => open.push(stream),
            Err(e) => panic!(
                "idle connection {} of {count} to {addr} failed: {e}",
                open.len() + 1
            ),
        }
    }
    open
}

/// Starts a cluster, then restarts one follower with `RLIMIT_NOFILE` = (`soft`, `hard`)
/// and waits until it follows the leader again. Returns (leader, follower, other).
async fn cluster_with_limited_follower(
    cluster: &Cluster,
    soft: u64,
    hard: u64,
    before_restart: impl FnOnce(&Cluster),
) -> (u64, u64, u64) {
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let mut others = (1..=3).filter(|id| *id != leader);
    let (follower, other) = (others.next().unwrap(), others.next().unwrap());
    cluster.kill(follower);
    before_restart(cluster);
    cluster.spawn_with_nofile_limit(follower, soft, hard);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = cluster.status(follower).await {
            if status["leader_id"] == json!(leader) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} did not rejoin leader {leader}\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .put(follower, "before-flood", "1")
        .await
        .unwrap_or_else(|e| panic!("write through node {follower} before the flood: {e:?}"));
    (leader, follower, other)
}

/// Isolates `leader` and waits until `other` sees a leader of a later term (which needs
/// the follower's vote: the isolated leader's does not reach it). Returns that leader.
async fn elect_without(
    cluster: &Cluster,
    leader: u64,
    other: u64,
    within: Duration,
) -> Result<u64, String> {
    let term_before = cluster
        .status(other)
        .await
        .and_then(|s| s["term"].as_u64())
        .ok_or("no status from the other follower")?;
    let url = format!("http://{}/v1/debug/isolate?on=true", cluster.api(leader));
    cluster
        .client
        .post(url)
        .send()
        .await
        .map_err(|e| format!("isolating leader {leader}: {e}"))?;
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = cluster.status(other).await {
            let term = status["term"].as_u64().unwrap_or(0);
            if let Some(new_leader) = status["leader_id"].as_u64() {
                if term > term_before && new_leader != leader {
                    return Ok(new_leader);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no new leader without node {leader} within {within:?} (term was {term_before})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `key` through node `via`, retrying refusals (503 during an election, or a
/// connection the node has not accepted yet) until `within` has passed. Each attempt
/// opens a new connection, as a new client would: a pooled one opened before the flood
/// would hide that the node cannot accept any more.
async fn put_within(
    cluster: &Cluster,
    via: u64,
    key: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let url = format!("http://{}/v1/kv/{key}", cluster.api(via));
    let mut last;
    loop {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        match support::answer(client.put(&url).body("v").send().await).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(format!(
                "write of {key} through node {via} failed for {within:?}; last: {last:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_alive(cluster: &Cluster, id: u64, failures: &mut Vec<String>) {
    if let Some(status) = cluster.wait_exit(id, Duration::ZERO) {
        failures.push(format!("node {id} stopped ({status})"));
    }
}

#[test]
fn idle_connections_to_a_follower_do_not_stop_its_writes_or_its_election() {
    raise_own_fd_limit();
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let hard = own_hard_fd_limit();
        let (leader, follower, other) =
            cluster_with_limited_follower(&cluster, FD_LIMIT, hard, |_| {}).await;
        let idle = open_idle_connections(cluster.api(follower), IDLE_CONNECTIONS);
        // Let the node accept them all (or run out of descriptors trying).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut failures = Vec::new();

        // (a) A write sent through the flooded follower commits.
        if let Err(e) = put_within(
            &cluster,
            follower,
            "through-follower",
            Duration::from_secs(5),
        )
        .await
        {
            failures.push(format!("(a) {e}"));
        }
        // (b) A term change, which makes the follower persist a new term and vote, does
        // not stop it, and the cluster keeps taking writes through it.
        match elect_without(&cluster, leader, other, Duration::from_secs(15)).await {
            Ok(new_leader) => {
                if let Err(e) = put_within(
                    &cluster,
                    follower,
                    "after-election",
                    Duration::from_secs(10),
                )
                .await
                {
                    failures.push(format!("(b) after node {new_leader} was elected: {e}"));
                }
            }
            Err(e) => failures.push(format!("(b) {e}")),
        }
        check_alive(&cluster, follower, &mut failures);
        drop(idle);
        assert!(
            failures.is_empty(),
            "node {follower} (soft RLIMIT_NOFILE {FD_LIMIT}, {IDLE_CONNECTIONS} idle client \
             connections):\n  {}\n{}",
            failures.join("\n  "),
            cluster.logs_tail()
        );
    });
}

#[test]
fn connection_cap_keeps_a_node_serving_when_its_fd_limit_cannot_be_raised() {
    raise_own_fd_limit();
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let (leader, follower, other) =
            cluster_with_limited_follower(&cluster, FD_LIMIT, FD_LIMIT, |c| {
                // Idle connections beyond the cap wait in the kernel's backlog until
                // the header-read timeout frees a slot: short, but long enough that
                // all the idle connections are open before the first ones time out,
                // even on a loaded machine (at 2 s the cap was sometimes never reached).
                c.set_config_field("client_header_read_timeout_ms", json!(5000));
            })
            .await;
        let idle = open_idle_connections(cluster.api(follower), IDLE_CONNECTIONS);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut failures = Vec::new();

        // While every client slot is taken, the node still replicates: a write through
        // the leader commits, which may need the flooded follower once the leader is
        // cut off below. Then a term change does not stop it.
        if let Err(e) = put_within(&cluster, leader, "through-leader", Duration::from_secs(5)).await
        {
            failures.push(format!("write through the leader: {e}"));
        }
        match elect_without(&cluster, leader, other, Duration::from_secs(15)).await {
            Ok(_) => {}
            Err(e) => failures.push(format!("election: {e}")),
        }
        check_alive(&cluster, follower, &mut failures);
        // Once the idle connections time out, clients are served again.
        if let Err(e) = put_within(
            &cluster,
            follower,
            "through-follower",
            Duration::from_secs(20),
        )
        .await
        {
            failures.push(format!("write through the follower: {e}"));
        }
        check_alive(&cluster, follower, &mut failures);
        let log = cluster.log_text(follower);
        if !log.contains("client connection cap reached") {
            failures.push("the node never reported reaching its client connection cap".into());
        }
        drop(idle);
        assert!(
            failures.is_empty(),
            "node {follower} (hard RLIMIT_NOFILE {FD_LIMIT}, {IDLE_CONNECTIONS} idle client \
             connections):\n  {}\n{}",
            failures.join("\n  "),
            cluster.logs_tail()
        );
    });
}

#[test]
fn a_client_that_never_sends_headers_is_disconnected_after_the_header_read_timeout() {
    use std::io::Read;
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec {
            nodes: 1,
            ..ClusterSpec::default()
        });
        cluster.kill(1);
        cluster.set_config_field("client_header_read_timeout_ms", json!(500));
        cluster.spawn(1);
        cluster.wait_for_leader(Duration::from_secs(15)).await;
        let addr = cluster.api(1).to_string();
        let closed_after = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let started = Instant::now();
            let mut byte = [0u8; 1];
            // The node closes the connection: EOF, or a reset.
            let outcome = stream.read(&mut byte);
            (started.elapsed(), format!("{outcome:?}"))
        })
        .await
        .unwrap();
        let (elapsed, outcome) = closed_after;
        assert!(
            elapsed < Duration::from_secs(5),
            "a silent connection was still open after {elapsed:?} ({outcome}); the header-read \
             timeout is 500 ms\n{}",
            cluster.logs_tail()
        );
        assert!(
            elapsed >= Duration::from_millis(400),
            "a silent connection was closed after only {elapsed:?} ({outcome})"
        );
    });
}
