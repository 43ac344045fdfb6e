//! A custom state machine plugged into a raftlog node: a replicated counter.
//!
//! Run it: `cargo run --release --example counter`. It starts a one-node cluster in a
//! temporary directory, adds to the counter through the Raft log, and reads it back.

use std::io::{self, Read, Write};
use std::time::Duration;

use raftlog::kv::{SnapshotSource, StateMachine};
use raftlog::node::{self, NodeOptions};
use raftlog::storage::{Member, Membership};

/// The whole state: one number. Commands are little-endian i64 deltas.
#[derive(Default)]
struct Counter(i64);

impl StateMachine for Counter {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        let delta = command.try_into().map(i64::from_le_bytes).unwrap_or(0);
        self.0 += delta;
        self.0.to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(Frozen(self.0))
    }

    fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
        let mut bytes = [0u8; 8];
        reader.read_exact(&mut bytes)?;
        self.0 = i64::from_le_bytes(bytes);
        Ok(())
    }
}

struct Frozen(i64);

impl SnapshotSource for Frozen {
    fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
        writer.write_all(&self.0.to_le_bytes())
    }
}

fn free_addr() -> io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (raft_addr, api_addr) = (free_addr()?, free_addr()?);
    let mut membership = Membership::default();
    membership.members.insert(
        1,
        Member {
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.to_string(),
            voter: true,
        },
    );
    let options = NodeOptions {
        id: 1,
        cluster_id: "counter-demo".into(),
        data_dir: dir.path().join("node-1"),
        bootstrap: membership,
        raft_addr,
        api_addr,
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
        snapshot_threshold: 10_000,
        snapshot_trailing_entries: 5_000,
        // A demo log: small preallocated segments.
        wal_segment_bytes: 4 << 20,
        storage_quota_bytes: None,
        tick: Duration::from_millis(10),
        membership_policy: Default::default(),
        max_uncommitted_bytes: raftlog::config::DEFAULT_MAX_UNCOMMITTED_BYTES,
        pending_write_bytes_max: raftlog::config::DEFAULT_PENDING_WRITE_BYTES_MAX,
        tls: None,
    };
    let node = node::start(options, Counter::default()).await?;

    // A one-node cluster elects itself; proposals wait until then.
    let timeout = Duration::from_secs(5);
    let mut total = 0;
    for delta in [5i64, 10, -3] {
        let (index, response) = loop {
            match node.propose(&delta.to_le_bytes(), timeout).await {
                Ok(answer) => break answer,
                Err(node::RequestError::NotLeader(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(format!("proposal failed: {e:?}").into()),
            }
        };
        total = i64::from_le_bytes(response.as_slice().try_into()?);
        println!("added {delta:>3} at log index {index}: counter = {total}");
    }
    let read = node
        .read(timeout, |counter: &Counter| counter.0)
        .await
        .map_err(|e| format!("read failed: {e:?}"))?;
    assert_eq!(read, total);
    println!("linearizable read: counter = {read}");
    Ok(())
}
