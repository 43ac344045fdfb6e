//! The fault schedule: bursts of faults separated by calm spells, each fault drawn by the
//! seed's weights (crash, partition, message storm, slow disk, pause or clock stall), plus
//! crashes aimed at the moments just after a node acted on something not yet durable.

use raftlog::raft::Role;

use super::checker::Check;
use super::trace::Ev;
use super::world::{Event, Phase, Sim, TICK_UNITS};

impl Sim {
    pub(super) fn in_burst(&self) -> bool {
        self.phase == Phase::Faulty && self.now < self.burst_until
    }

    /// A crash within a few units, often with a quick restart: a vote or an
    /// acknowledgement sent before it was durable is forgotten while its recipient still
    /// counts on it.
    pub(super) fn schedule_crash_soon(&mut self, i: usize) {
        let delay = self.fault_rng.below(4);
        let down_for = if self.fault_rng.below(2) == 0 {
            self.fault_rng.range(1, 15)
        } else {
            self.fault_rng.range(15, 200)
        };
        let life = self.nodes[i].life;
        self.schedule(
            delay,
            Event::Crash {
                node: i,
                life,
                down_for,
            },
        );
    }

    pub(super) fn fault_step(&mut self) -> Check {
        let p = self.params.clone();
        let total = p.w_crash + p.w_partition + p.w_storm + p.w_slow_disk + p.w_pause;
        if total == 0 {
            return Ok(());
        }
        let mut roll = self.fault_rng.below(total);
        if roll < p.w_crash {
            return self.fault_crash();
        }
        roll -= p.w_crash;
        if roll < p.w_partition {
            self.fault_partition();
            return Ok(());
        }
        roll -= p.w_partition;
        if roll < p.w_storm {
            self.storm_generation += 1;
            self.storm_drop_ppm = self.fault_rng.pick(&[300_000, 700_000, 1_000_000]);
            let until = self.fault_rng.range(20, 400);
            let generation = self.storm_generation;
            self.record(Ev::NetStorm {
                drop_ppm: self.storm_drop_ppm,
                until: self.now + until,
            });
            self.schedule(until, Event::StormEnd { generation });
            return Ok(());
        }
        roll -= p.w_storm;
        if roll < p.w_pause {
            return self.fault_pause();
        }
        let i = self.fault_rng.below(self.nodes.len() as u64) as usize;
        let until = self.now + self.fault_rng.range(50, 1000);
        self.nodes[i].slow_disk_until = until;
        let id = self.nodes[i].id;
        self.record(Ev::SlowDisk { node: id, until });
        Ok(())
    }

    /// Pauses a process (SIGSTOP, a long GC pause): no ticks, no message handling, no
    /// disk callbacks until it resumes, when it finds everything queued up. A paused leader
    /// that resumes still believing it leads is what ReadIndex's quorum round is for.
    pub(super) fn fault_pause(&mut self) -> Check {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up() && self.nodes[i].paused_until <= self.now)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let leaders: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].role == Role::Leader)
            .collect();
        let i = if !leaders.is_empty() && self.fault_rng.below(3) != 0 {
            self.fault_rng.pick(&leaders)
        } else {
            self.fault_rng.pick(&candidates)
        };
        let id = self.nodes[i].id;
        if self.options.clock_stalls {
            // The node driver's contract: every tick missed while the process stood still
            // is handed over on resuming. (Without it a paused leader's lease would outlive
            // its leadership: lease reads rely on clocks that keep running, thesis §6.3.)
            let timeout = u64::from(self.params.election_min + self.params.election_spread);
            let until = if self.fault_rng.below(2) == 0 {
                self.now + self.fault_rng.range(20, 600)
            } else {
                self.now + self.fault_rng.range(timeout, 4 * timeout) * TICK_UNITS
            };
            let node = &mut self.nodes[i];
            node.paused_until = node.paused_until.max(until);
            // A stall that begins before the previous one's ticks were handed over (the node
            // has not run since) extends it: every tick since the first is still owed.
            node.stalled_since.get_or_insert(self.now);
            self.record(Ev::Stall { node: id, until });
            return Ok(());
        }
        let until = self.now + self.fault_rng.range(20, 600);
        self.nodes[i].paused_until = until;
        self.record(Ev::Pause { node: id, until });
        Ok(())
    }

    /// Crashes a node: often the leader, often one with writes still in flight to its disk
    /// (a vote or entries it may already have acknowledged if the core is wrong), otherwise
    /// anyone. Down for a short or a long time.
    pub(super) fn fault_crash(&mut self) -> Check {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up())
            .collect();
        if up.is_empty() {
            return Ok(());
        }
        let leaders: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].role == Role::Leader)
            .collect();
        let writing: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| !self.nodes[i].disk.is_empty())
            .collect();
        let roll = self.fault_rng.below(100);
        let leader_pct = self.params.leader_crash_pct;
        let victim = if roll < leader_pct && !leaders.is_empty() {
            self.fault_rng.pick(&leaders)
        } else if roll < leader_pct + 40 && !writing.is_empty() {
            self.fault_rng.pick(&writing)
        } else {
            self.fault_rng.pick(&up)
        };
        let down_for = if self.fault_rng.below(2) == 0 {
            self.fault_rng.range(1, 30)
        } else {
            self.fault_rng.range(1, self.params.crash_down_max)
        };
        self.crash(victim, down_for);
        Ok(())
    }
}
