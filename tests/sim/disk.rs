//! The disks: each node's writes queue up in order and complete after a drawn latency
//! (slower while a slow-disk fault lasts); only then do they reach `Durable`, and only then
//! does the core hear `on_persisted` and do the messages that waited for them go out. A
//! crash loses every write still queued, except that the one at the head may be torn.

use bytes::Bytes;
use raftlog::raft::driver::{complete_write, Write};
use raftlog::raft::{Role, SnapshotChunk};

use super::checker::{violation, Check, Violation};
use super::kv::Kv;
use super::storage::Durable;
use super::trace::Ev;
use super::world::{Event, Sim};

impl Sim {
    /// Power cut: the core and every write still in flight to the disk are gone.
    pub(super) fn crash(&mut self, i: usize, down_for: u64) {
        let node = &mut self.nodes[i];
        if node.core.is_none() {
            return;
        }
        node.core = None;
        node.life += 1;
        // The write at the head of the queue may be torn: the snapshot chunk and a prefix of
        // its entries reached the disk (the WAL), the hard state (a separate store) only if
        // every entry did. Anything after it is lost whole.
        let torn = match node.disk.pop_front() {
            Some(batch) if self.disk_rng.below(2) == 0 => Some(batch),
            Some(batch) => {
                node.disk.push_front(batch);
                None
            }
            None => None,
        };
        let lost = node.disk.len();
        node.disk.clear();
        if let Some(batch) = torn {
            let mut durable = node.durable.borrow_mut();
            if let Some(chunk) = batch.snapshot_chunk {
                // A bad chunk was reported when the Ready was taken.
                let _ = persist_chunk_bytes(&mut durable, &chunk);
            }
            let keep = self.disk_rng.below(batch.entries.len() as u64 + 1) as usize;
            // A gap here would have been reported when the Ready was taken.
            let _ = durable.append(&batch.entries[..keep]);
            if keep == batch.entries.len() && self.disk_rng.below(2) == 0 {
                if let Some(hs) = batch.hard_state {
                    durable.hard_state = hs;
                }
            }
        }
        node.proposals.clear();
        node.reads.clear();
        node.role = Role::Follower;
        let (id, life) = (node.id, node.life);
        self.stats.crashes += 1;
        self.record(Ev::Crash {
            node: id,
            lost_writes: lost,
        });
        self.schedule(down_for.max(1), Event::Restart { node: i, life });
        // The dead process's sockets close: its peers' drivers usually see the
        // connections end (not always: a power cut sends no FIN).
        for j in 0..self.nodes.len() {
            if j != i && self.link_rng.below(4) != 0 {
                self.report_link_lost(j, id);
            }
        }
    }

    /// Queues a write (one `Ready`'s) behind node `i`'s earlier ones.
    pub(super) fn enqueue_write(&mut self, i: usize, batch: Write, has_write: bool) -> Check {
        if !has_write && self.nodes[i].disk.is_empty() {
            // Nothing to wait for: the messages' dependencies are all durable already.
            return complete_write(&mut self.driven(i), None, None, batch.persisted_messages);
        }
        let node = &mut self.nodes[i];
        let delay = if has_write {
            let max = if self.now < node.slow_disk_until {
                self.params.disk_delay_max * 10
            } else {
                self.params.disk_delay_max
            };
            self.disk_rng.range(1, max + 1)
        } else {
            0
        };
        let done_at = (self.now + delay).max(node.disk_free_at);
        node.disk_free_at = done_at;
        node.disk.push_back(batch);
        let life = node.life;
        let wait = done_at - self.now;
        self.schedule(wait, Event::DiskDone { node: i, life });
        Ok(())
    }

    /// The oldest write of node `i` reached the disk.
    pub(super) fn disk_done(&mut self, i: usize) -> Check {
        let Some(batch) = self.nodes[i].disk.pop_front() else {
            return Err(violation(
                "harness",
                "disk completion without a write".to_string(),
            ));
        };
        let id = self.nodes[i].id;
        let last_entry = batch.last_entry();
        let mut installed = None;
        if let Some(chunk) = batch.snapshot_chunk {
            let meta = chunk.meta.clone();
            if self.persist_snapshot_chunk(i, chunk)?.is_some() {
                installed = Some(meta);
            }
        }
        if !batch.entries.is_empty() {
            self.nodes[i]
                .durable
                .borrow_mut()
                .append(&batch.entries)
                .map_err(|e| violation("ready contract", format!("node {id}: {e}")))?;
        }
        if let Some(hs) = batch.hard_state {
            self.nodes[i].durable.borrow_mut().hard_state = hs;
        }
        let durable = self.nodes[i].durable.borrow();
        let ev = Ev::Durable {
            node: id,
            last_index: durable.last_index(),
            hard_state: (durable.hard_state.term, durable.hard_state.voted_for),
        };
        drop(durable);
        self.record(ev);
        complete_write(
            &mut self.driven(i),
            installed,
            last_entry,
            batch.persisted_messages,
        )?;
        self.handle_ready(i)
    }

    /// Persists one received snapshot chunk; on the last one installs the snapshot (the
    /// state machine is restored from its bytes) and returns its (index, term).
    pub(super) fn persist_snapshot_chunk(
        &mut self,
        i: usize,
        chunk: SnapshotChunk,
    ) -> Result<Option<(u64, u64)>, Violation> {
        let id = self.nodes[i].id;
        let installed = {
            let mut durable = self.nodes[i].durable.borrow_mut();
            persist_chunk_bytes(&mut durable, &chunk)
                .map_err(|e| violation("ready contract", format!("node {id}: {e}")))?
        };
        let Some(bytes) = installed else {
            return Ok(None);
        };
        let meta = chunk.meta;
        let kv = Kv::decode(&bytes).map_err(|e| {
            violation(
                "snapshot decodes",
                format!("node {id}: received snapshot {}: {e}", meta.last_index),
            )
        })?;
        self.check_installed_snapshot(i, &meta, &kv)?;
        self.nodes[i].kv = kv;
        self.stats.snapshots_installed += 1;
        self.record(Ev::SnapshotInstalled {
            node: id,
            index: meta.last_index,
            term: meta.last_term,
        });
        Ok(Some((meta.last_index, meta.last_term)))
    }
}

/// Writes a received snapshot chunk to the durable partial snapshot; with `done`, installs
/// the assembled snapshot and returns its bytes.
fn persist_chunk_bytes(
    durable: &mut Durable,
    chunk: &SnapshotChunk,
) -> Result<Option<Bytes>, String> {
    if chunk.offset == 0 {
        durable.partial = Some((chunk.meta.clone(), Vec::new()));
    }
    let Some((meta, data)) = durable.partial.as_mut() else {
        return Err(format!(
            "snapshot chunk at offset {} with no transfer started",
            chunk.offset
        ));
    };
    if *meta != chunk.meta || data.len() as u64 != chunk.offset {
        return Err(format!(
            "snapshot chunk ({}, offset {}) does not continue the transfer ({}, {} bytes so far)",
            chunk.meta.last_index,
            chunk.offset,
            meta.last_index,
            data.len()
        ));
    }
    data.extend_from_slice(&chunk.data);
    if !chunk.done {
        return Ok(None);
    }
    let bytes = Bytes::from(std::mem::take(data));
    durable.install_snapshot(chunk.meta.clone(), bytes.clone());
    Ok(Some(bytes))
}
