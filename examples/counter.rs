//! A custom state machine plugged into a raftlog node: a replicated counter.
//!
//! Run it: `cargo run --release --example counter`. It starts a one-node cluster in a
//! temporary directory, adds to the counter through the Raft log, and reads it back.

use std::io::{self, Read, Write};
use std::time::Duration;

use raftlog::{NodeOptions, RequestError, SnapshotSource, StateMachine};

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
    let mut options = NodeOptions::new(1, dir.path().join("node-1"), free_addr()?);
    // A demo log: small preallocated segments.
    options.wal_segment_bytes = 4 << 20;
    let node = raftlog::start(options, Counter::default()).await?;

    // A one-node cluster elects itself; proposals wait until then.
    let timeout = Duration::from_secs(5);
    let mut total = 0;
    for delta in [5i64, 10, -3] {
        let (index, response) = loop {
            match node.propose(&delta.to_le_bytes(), timeout).await {
                Ok(answer) => break answer,
                Err(RequestError::NotLeader(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        total = i64::from_le_bytes(response.as_slice().try_into()?);
        println!("added {delta:>3} at log index {index}: counter = {total}");
    }
    let read = node.read(timeout, |counter: &Counter| counter.0).await?;
    assert_eq!(read, total);
    println!("linearizable read: counter = {read}");
    Ok(())
}
