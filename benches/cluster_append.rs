//! End-to-end append throughput (`cargo bench --bench cluster_append`; CI runs it with
//! `-- --test`): an in-process 3-node cluster, the nodes talking over real loopback TCP
//! (the peer transport) and each writing its own WAL with fdatasync in a temporary
//! directory on a real disk. One iteration = `batch` KV puts of 100-byte values proposed
//! at once on the leader, timed until every one is applied there, which means it is
//! durable on a majority (Raft §5.3; the leader counts itself only after its own fsync).
//!
//! Beside `wal_append` (the disk alone) and `raft_core` (the core alone) this is the sum:
//! core, transport, group commit, replication and apply, without the client's HTTP hop
//! (each node serves its API, as a fresh node needs it to confirm a first start, but the
//! puts are proposed directly). The client API on top is measured by `raftlog bench` and
//! `benches/compare-etcd.sh`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use raftlog::api::{self, ApiOptions};
use raftlog::kv::{KvCommand, KvStore};
use raftlog::node::{self, Node, NodeOptions, RequestError};
use raftlog::storage::{Member, Membership};

const BATCHES: [usize; 3] = [1, 16, 256];
const VALUE_BYTES: usize = 100;
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// A temporary directory on a real disk: /tmp unless it is tmpfs (where fdatasync is free),
/// else next to the bench binary in the target directory.
fn bench_dir() -> tempfile::TempDir {
    let tmp_is_tmpfs = std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == "/tmp" && f[2] == "tmpfs"
            })
        })
        .unwrap_or(true);
    if !tmp_is_tmpfs {
        return tempfile::tempdir().expect("tempdir");
    }
    let exe = std::env::current_exe().expect("bench binary path");
    let base: PathBuf = exe
        .ancestors()
        .nth(3)
        .map(|p| p.join("bench-tmp"))
        .unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("create bench dir");
    tempfile::tempdir_in(base).expect("tempdir in target")
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Three nodes with the defaults of `config.json` (50 ms heartbeats, 150–300 ms election
/// timeout, snapshots every 10,000 entries).
struct Cluster {
    nodes: Vec<Node<KvStore>>,
    leader: usize,
    _dir: tempfile::TempDir,
}

async fn start_cluster() -> Cluster {
    let dir = bench_dir();
    let addrs: BTreeMap<u64, (std::net::SocketAddr, std::net::SocketAddr)> =
        (1..=3).map(|id| (id, (free_addr(), free_addr()))).collect();
    let mut membership = Membership::default();
    for (id, (raft_addr, api_addr)) in &addrs {
        membership.members.insert(
            *id,
            Member {
                raft_addr: raft_addr.to_string(),
                api_addr: api_addr.to_string(),
                voter: true,
            },
        );
    }
    let mut nodes = Vec::new();
    for (id, (raft_addr, api_addr)) in &addrs {
        let mut options = NodeOptions::new(*id, dir.path().join(format!("node-{id}")), *raft_addr);
        options.cluster_id = "cluster-append-bench".into();
        options.bootstrap = membership.clone();
        options.wal_segment_bytes = 64 << 20;
        let node = node::start(options, KvStore::new())
            .await
            .unwrap_or_else(|e| panic!("node {id} did not start: {e:?}"));
        // The client API is served too, though the bench proposes directly: a fresh node
        // votes only once the other voters confirm a first start through it.
        let listener = api::server::bind(*api_addr)
            .unwrap_or_else(|e| panic!("node {id}: cannot listen on {api_addr}: {e}"));
        tokio::spawn(api::serve(listener, node.clone(), ApiOptions::default()));
        nodes.push(node);
    }
    let mut cluster = Cluster {
        nodes,
        leader: 0,
        _dir: dir,
    };
    // The first put that is applied finds the leader (after the first election).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = cluster.nodes[cluster.leader]
            .propose(&put(0), PROPOSE_TIMEOUT)
            .await;
        assert!(
            Instant::now() < deadline,
            "no put applied within 30 s; last answer from node {}: {answer:?}",
            cluster.leader + 1
        );
        match answer {
            Ok(_) => return cluster,
            Err(RequestError::NotLeader(Some(id))) => cluster.leader = (id - 1) as usize,
            Err(_) => {
                cluster.leader = (cluster.leader + 1) % 3;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn put(key: u64) -> Vec<u8> {
    KvCommand::Put {
        key: Bytes::from(format!("bench-{key}")),
        value: Bytes::from(vec![b'x'; VALUE_BYTES]),
    }
    .encode()
}

/// Proposes `batch` puts at once on the leader and waits for all of them.
async fn append_batch(cluster: &Cluster, batch: usize, next_key: &mut u64) {
    let leader = &cluster.nodes[cluster.leader];
    let commands: Vec<Vec<u8>> = (0..batch)
        .map(|i| put((*next_key + i as u64) % 100_000))
        .collect();
    *next_key += batch as u64;
    let answers = futures_util::future::join_all(
        commands
            .iter()
            .map(|command| leader.propose(command, PROPOSE_TIMEOUT)),
    )
    .await;
    for answer in answers {
        if let Err(e) = answer {
            panic!("a put was not applied: {e:?} (did leadership move during the bench?)");
        }
    }
}

fn bench_cluster_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cluster = runtime.block_on(start_cluster());
    let mut group = c.benchmark_group("cluster_append");
    if !test_mode() {
        group.measurement_time(Duration::from_secs(10));
    }
    let mut next_key = 1;
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{VALUE_BYTES}B"), format!("batch{batch}")),
            &batch,
            |b, &batch| {
                b.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            append_batch(&cluster, batch, &mut next_key).await;
                        }
                        started.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
    // The nodes have no shutdown: their threads end with the process, and dropping the
    // runtime under them would make them log errors about closed channels. Only the
    // directory is removed (the open files stay valid until the process exits).
    let Cluster {
        nodes, _dir: dir, ..
    } = cluster;
    std::mem::forget(nodes);
    std::mem::forget(runtime);
    drop(dir);
}

criterion_group!(benches, bench_cluster_append);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
