//! Raft core benchmarks (`cargo bench --bench raft_core`; CI runs it with `-- --test`).
//!
//! `raft_core_propose/<payload>_<batching>`: proposals per second through a 3-node
//! in-memory cluster without faults, on one thread. The driver delivers every message
//! directly, "persists" each `Ready` instantly into `MemStorage`, reports it with
//! `on_persisted` and applies with `on_applied` (through the shared test driver,
//! `raftlog::raft::driver`), so the figure is the cost of the core
//! itself (and of MemStorage), not of disks or networks. One iteration proposes `batch`
//! commands on the leader and drives the cluster until nothing moves (the leader has
//! applied them and the followers have learned the commit index). Logs are compacted behind
//! a snapshot every 64 Ki entries to keep memory flat, inside the timed part. Time is the
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so the figures mean "on one core" even
//! on a busy machine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftlog::raft::driver::{self, complete_write, ReadyHandler, Write, READY_ROUNDS_MAX};
use raftlog::raft::{
    Config, Entry, Envelope, HardState, LogStorage, MemStorage, Member, Membership, NodeId,
    RaftCore, Role, SnapshotMeta,
};

const PAYLOADS_BYTES: [usize; 2] = [64, 1024];
const BATCHES: [usize; 2] = [256, 1];
const COMPACT_EVERY_ENTRIES: u64 = 64 << 10;

struct Cluster {
    nodes: Vec<RaftCore<MemStorage>>,
    queue: VecDeque<Envelope>,
    leader: usize,
}

fn membership(n: u64) -> Membership {
    let mut m = Membership::default();
    for id in 1..=n {
        let member = Member {
            raft_addr: String::new(),
            api_addr: String::new(),
            voter: true,
        };
        m.members.insert(id, member);
    }
    m
}

impl Cluster {
    fn new() -> Cluster {
        let nodes = (1..=3)
            .map(|id| {
                let config = Config::new(id);
                RaftCore::new(
                    config,
                    MemStorage::new(),
                    HardState::default(),
                    membership(3),
                )
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            queue: VecDeque::new(),
            leader: 0,
        };
        // Elect node 1: tick it alone until it wins.
        for _ in 0..1000 {
            cluster.nodes[0].tick();
            cluster.drive();
            if cluster.nodes[0].status().role == Role::Leader {
                return cluster;
            }
        }
        panic!("no leader elected");
    }

    fn index(id: NodeId) -> usize {
        (id - 1) as usize
    }

    /// Persists, delivers and applies until nothing moves.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let mut node = BenchNode {
                    cluster: self,
                    i,
                    applied: None,
                };
                let handled = driver::drain(&mut node).unwrap_or_else(|never| match never {});
                moved |= handled > 0;
            }
            while let Some(env) = self.queue.pop_front() {
                self.nodes[Self::index(env.to)].step(env);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn propose_and_commit(&mut self, payload: &Bytes, batch: usize) {
        let leader = &mut self.nodes[self.leader];
        let mut last = 0;
        for _ in 0..batch {
            last = leader.propose(payload.clone()).expect("leader accepts").0;
        }
        self.drive();
        let status = self.nodes[self.leader].status();
        assert!(
            status.applied_index >= last,
            "entry {last} not applied: {status:?}"
        );
    }
}

/// One node of the bench cluster, handed to the shared driver: messages go to the
/// cluster's queue, writes land in `MemStorage` at once.
struct BenchNode<'a> {
    cluster: &'a mut Cluster,
    i: usize,
    /// Applied by the `Ready` being handled; compaction waits until the core knows.
    applied: Option<u64>,
}

impl ReadyHandler for BenchNode<'_> {
    type Storage = MemStorage;
    type Error = Infallible;

    fn core(&mut self) -> Option<&mut RaftCore<MemStorage>> {
        Some(&mut self.cluster.nodes[self.i])
    }

    fn send(&mut self, env: Envelope, _after_persist: bool) -> Result<(), Infallible> {
        self.cluster.queue.push_back(env);
        Ok(())
    }

    // One move of the whole batch, as the bench did before the shared driver.
    fn send_all(
        &mut self,
        messages: Vec<Envelope>,
        _after_persist: bool,
    ) -> Result<(), Infallible> {
        self.cluster.queue.extend(messages);
        Ok(())
    }

    /// Only entries are kept: nothing restarts, so term and vote need not be, and no
    /// follower falls behind a snapshot.
    fn write(&mut self, write: Write) -> Result<(), Infallible> {
        if !write.entries.is_empty() {
            let node = &mut self.cluster.nodes[self.i];
            node.storage_mut().append(&write.entries);
        }
        let last_entry = write.last_entry();
        complete_write(self, None, last_entry, write.persisted_messages)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Infallible> {
        self.applied = entries.last().map(|e| e.index);
        Ok(())
    }

    fn ready_handled(&mut self) -> Result<(), Infallible> {
        if let Some(applied) = self.applied.take() {
            let node = &mut self.cluster.nodes[self.i];
            if applied + 1 - node.storage().first_index() >= COMPACT_EVERY_ENTRIES {
                compact(node, applied);
            }
        }
        Ok(())
    }

    fn ready_never_drains(&mut self) -> Infallible {
        panic!(
            "node {}: still has a Ready after {READY_ROUNDS_MAX} rounds",
            self.i + 1
        )
    }
}

fn compact(node: &mut RaftCore<MemStorage>, applied: u64) {
    let term = node
        .storage()
        .term(applied)
        .expect("applied entry is stored");
    let meta = SnapshotMeta {
        last_index: applied,
        last_term: term,
        membership: node.status().membership,
    };
    node.storage_mut().set_snapshot(meta.clone(), Bytes::new());
    node.storage_mut().compact(applied);
    node.on_snapshot_taken(meta);
}

/// CPU time of this thread: the machine is shared, and the question is what one core
/// can do, so time spent descheduled must not count.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn propose(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_core_propose");
    for payload_bytes in PAYLOADS_BYTES {
        for batch in BATCHES {
            let payload = Bytes::from(vec![7u8; payload_bytes]);
            let name = if batch == 1 {
                "unbatched".to_string()
            } else {
                format!("batch{batch}")
            };
            let id = BenchmarkId::new(format!("{payload_bytes}B"), name);
            group.throughput(Throughput::Elements(batch as u64));
            let mut cluster = Cluster::new();
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let start = thread_cpu_time();
                    for _ in 0..iters {
                        cluster.propose_and_commit(&payload, batch);
                    }
                    thread_cpu_time() - start
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, propose);
criterion_main!(benches);
