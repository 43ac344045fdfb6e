//! The network: every message a node sends may be lost (a steady rate, or a storm), be
//! duplicated, take a short or a long (tail) delay, so arrive out of order; partitions
//! (isolation, two sides, one-way, random links) drop whatever crosses them. A message for a
//! paused node waits in its socket buffer.

use raftlog::raft::{Envelope, Message, NodeId, Role};

use super::checker::Check;
use super::trace::{Ev, Msg};
use super::world::{Event, Phase, Sim};

impl Sim {
    pub(super) fn send(&mut self, i: usize, env: Envelope, after_persist: bool) -> Check {
        self.check_message_sent(i, &env, after_persist)?;
        let msg = Msg::of(&env.message);
        self.record(Ev::Send {
            from: env.from,
            to: env.to,
            msg,
            after_persist,
        });
        let crash_ppm = match &env.message {
            Message::RequestVoteResponse { granted: true, .. } => self
                .params
                .crash_after_send_ppm
                .max(self.params.crash_after_vote_ppm),
            Message::AppendEntriesResponse { success: true, .. } => {
                self.params.crash_after_send_ppm
            }
            Message::AppendEntries { entries, .. } if !entries.is_empty() => {
                self.params.crash_after_send_ppm
            }
            _ => 0,
        };
        if crash_ppm > 0 && self.in_burst() && self.fault_rng.chance_ppm(crash_ppm) {
            self.schedule_crash_soon(i);
        }
        let drop_ppm = if self.phase == Phase::Faulty {
            self.params.drop_ppm.max(self.storm_drop_ppm)
        } else {
            0
        };
        if self.net_rng.chance_ppm(drop_ppm) {
            self.stats.messages_dropped += 1;
            self.record(Ev::Drop {
                from: env.from,
                to: env.to,
                msg,
                why: "lost",
            });
            return Ok(());
        }
        if self.net_rng.chance_ppm(self.params.dup_ppm) {
            let delay = self.message_delay();
            self.schedule(delay, Event::Deliver { env: env.clone() });
        }
        let delay = self.message_delay();
        self.schedule(delay, Event::Deliver { env });
        Ok(())
    }

    pub(super) fn message_delay(&mut self) -> u64 {
        if self.phase == Phase::Faulty && self.net_rng.chance_ppm(self.params.tail_ppm) {
            self.net_rng.range(1, self.params.tail_max)
        } else {
            self.net_rng.range(1, self.params.delay_max + 1)
        }
    }

    pub(super) fn deliver(&mut self, env: Envelope) -> Check {
        let from = (env.from - 1) as usize;
        let to = (env.to - 1) as usize;
        let msg = Msg::of(&env.message);
        let why = if self.blocked[from][to] {
            Some("partitioned")
        } else if !self.nodes[to].up() {
            Some("receiver down")
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.messages_dropped += 1;
            self.record(Ev::Drop {
                from: env.from,
                to: env.to,
                msg,
                why,
            });
            return Ok(());
        }
        if let Some(wait) = self.paused_for(to) {
            // Queued in the socket buffer until the process runs again, in arrival order
            // give or take a few units.
            let jitter = self.net_rng.below(5);
            self.schedule(wait + jitter, Event::Deliver { env });
            return Ok(());
        }
        self.catch_up_ticks(to)?;
        self.stats.messages_delivered += 1;
        self.record(Ev::Deliver {
            from: env.from,
            to: env.to,
            msg,
        });
        self.core(to).step(env);
        self.handle_ready(to)
    }

    // The partition is a matrix; index loops say what they do more plainly than iterators.
    #[allow(clippy::needless_range_loop)]
    pub(super) fn fault_partition(&mut self) {
        let n = self.nodes.len();
        if self.blocked.iter().flatten().any(|&b| b) {
            return; // one partition at a time; it heals on its own timer
        }
        let mut blocked = vec![vec![false; n]; n];
        let kind = self.fault_rng.below(4);
        let leader = (0..n).find(|&i| self.nodes[i].up() && self.nodes[i].role == Role::Leader);
        match kind {
            // Isolate one node (often the leader) in both directions.
            0 => {
                let victim = match leader {
                    Some(l) if self.fault_rng.below(3) != 0 => l,
                    _ => self.fault_rng.below(n as u64) as usize,
                };
                for j in 0..n {
                    if j != victim {
                        blocked[victim][j] = true;
                        blocked[j][victim] = true;
                    }
                }
            }
            // Split into two random groups.
            1 => {
                let side: Vec<bool> = (0..n).map(|_| self.fault_rng.below(2) == 0).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            blocked[a][b] = true;
                        }
                    }
                }
            }
            // One-way: a node can send but not receive, or receive but not send.
            2 => {
                let victim = match leader {
                    Some(l) if self.fault_rng.below(2) == 0 => l,
                    _ => self.fault_rng.below(n as u64) as usize,
                };
                let outgoing = self.fault_rng.below(2) == 0;
                for j in 0..n {
                    if j != victim {
                        if outgoing {
                            blocked[victim][j] = true;
                        } else {
                            blocked[j][victim] = true;
                        }
                    }
                }
            }
            // Random individual links, one direction each.
            _ => {
                for a in 0..n {
                    for b in 0..n {
                        if a != b && self.fault_rng.below(3) == 0 {
                            blocked[a][b] = true;
                        }
                    }
                }
            }
        }
        self.blocked = blocked;
        self.maybe_reset_blocked_links();
        self.partition_generation += 1;
        self.stats.partitions += 1;
        let list = self.blocked_links();
        self.record(Ev::Partition { blocked: list });
        let duration = self.fault_rng.range(20, self.params.partition_max);
        let generation = self.partition_generation;
        self.schedule(duration, Event::HealPartition { generation });
    }

    /// Isolates node `i` in both directions now (messages in flight to and from it are
    /// lost), unless another partition is in force.
    pub(super) fn isolate(&mut self, i: usize) {
        if self.blocked.iter().flatten().any(|&b| b) {
            return;
        }
        let n = self.nodes.len();
        for j in 0..n {
            if j != i {
                self.blocked[i][j] = true;
                self.blocked[j][i] = true;
            }
        }
        self.maybe_reset_blocked_links();
        self.partition_generation += 1;
        self.stats.partitions += 1;
        let list = self.blocked_links();
        self.record(Ev::Partition { blocked: list });
        let duration = self.fault_rng.range(20, self.params.partition_max);
        let generation = self.partition_generation;
        self.schedule(duration, Event::HealPartition { generation });
    }

    /// Some partitions reset the connections they cut (a firewall that rejects, a
    /// restarted switch): both ends then see each cut link end, although the peer on the
    /// other side is alive and, if it leads, still holds its lease. Others drop packets
    /// silently and nobody is told.
    fn maybe_reset_blocked_links(&mut self) {
        if self.link_rng.below(2) == 0 {
            return;
        }
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                if a != b && (self.blocked[a][b] || self.blocked[b][a]) {
                    let peer = self.nodes[b].id;
                    self.report_link_lost(a, peer);
                }
            }
        }
    }

    /// Tells node `i`'s driver, a moment from now, that its connection to or from `peer`
    /// ended; the driver hands that to the core (`RaftCore::on_link_lost`).
    pub(super) fn report_link_lost(&mut self, i: usize, peer: NodeId) {
        if !self.nodes[i].up() {
            return;
        }
        let delay = self.link_rng.range(1, self.params.delay_max + 1);
        let life = self.nodes[i].life;
        self.schedule(
            delay,
            Event::LinkLost {
                node: i,
                life,
                peer,
            },
        );
    }

    pub(super) fn link_lost(&mut self, i: usize, life: u64, peer: NodeId) -> Check {
        if self.nodes[i].life != life || !self.nodes[i].up() {
            return Ok(());
        }
        if let Some(wait) = self.paused_for(i) {
            // The process reads the end of the connection when it runs again.
            self.schedule(
                wait,
                Event::LinkLost {
                    node: i,
                    life,
                    peer,
                },
            );
            return Ok(());
        }
        self.catch_up_ticks(i)?;
        let node = self.nodes[i].id;
        self.record(Ev::LinkLost { node, peer });
        self.core(i).on_link_lost(peer);
        self.handle_ready(i)
    }

    pub(super) fn blocked_links(&self) -> Vec<(NodeId, NodeId)> {
        let mut list = Vec::new();
        for (a, row) in self.blocked.iter().enumerate() {
            for (b, &x) in row.iter().enumerate() {
                if x {
                    list.push((a as u64 + 1, b as u64 + 1));
                }
            }
        }
        list
    }

    pub(super) fn heal_partition(&mut self) {
        let n = self.nodes.len();
        self.blocked = vec![vec![false; n]; n];
        self.record(Ev::Heal);
    }
}
