//! The per-seed knobs: everything a seed decides about a run before it starts (cluster size,
//! network and disk behaviour, fault mix, client mix, core configuration), drawn from one
//! RNG stream so that adding a knob at the end leaves every earlier one as it was.

use super::rng::Rng;

/// Per-seed knobs, drawn from the seed so that different seeds stress different things
/// (swarm testing: a run with few crashes but many partitions finds other bugs than one
/// with the opposite mix).
#[derive(Clone, Debug)]
pub(super) struct Params {
    pub(super) nodes: usize,
    pub(super) drop_ppm: u64,
    pub(super) dup_ppm: u64,
    pub(super) delay_max: u64,
    pub(super) tail_ppm: u64,
    pub(super) tail_max: u64,
    pub(super) disk_delay_max: u64,
    pub(super) fault_interval: u64,
    pub(super) calm_max: u64,
    pub(super) burst_max: u64,
    pub(super) w_crash: u64,
    pub(super) w_partition: u64,
    pub(super) w_storm: u64,
    pub(super) w_slow_disk: u64,
    pub(super) w_pause: u64,
    /// Chance of a crash right after a node grants a vote, acknowledges an append or (as
    /// leader) sends entries: the moments where acting before persisting loses data.
    pub(super) crash_after_send_ppm: u64,
    pub(super) crash_down_max: u64,
    /// Chance of isolating a leader right after it accepts a write or advances its commit
    /// index.
    pub(super) isolate_ppm: u64,
    /// Chance of a crash right after granting a vote (it must have been durable).
    pub(super) crash_after_vote_ppm: u64,
    /// Election timeouts are drawn from `[min, min + spread)`: a small spread makes
    /// candidates collide (split votes, two candidates in one term).
    pub(super) election_spread: u32,
    /// Share of client steps that add, promote or remove a member (thesis §4.1).
    pub(super) membership_pct: u64,
    /// Nodes beyond the initial voters, started as non-members, for membership changes.
    pub(super) spare_nodes: usize,
    /// Share of ordinary crashes aimed at a leader.
    pub(super) leader_crash_pct: u64,
    pub(super) profile: &'static str,
    pub(super) partition_max: u64,
    pub(super) client_interval: u64,
    pub(super) read_pct: u64,
    pub(super) snapshot_pct: u64,
    pub(super) transfer_pct: u64,
    pub(super) snapshot_gap: u64,
    pub(super) snapshot_trailing: u64,
    pub(super) pre_vote: bool,
    pub(super) check_quorum: bool,
    pub(super) heartbeat: u32,
    pub(super) election_min: u32,
    pub(super) max_msg_bytes: u64,
    pub(super) max_inflight: usize,
    /// Backpressure: with one entry per message and one message in flight, a leader that
    /// accepted thousands of writes needs more than the liveness bound to replicate them.
    pub(super) max_uncommitted: u64,
    pub(super) max_apply_bytes: u64,
    pub(super) snapshot_chunk_bytes: u64,
    /// Share of client reads sent as lease reads (with `clock_stalls`).
    pub(super) lease_read_pct: u64,
}

impl Params {
    pub(super) fn draw(rng: &mut Rng) -> Params {
        let election_min = rng.range(8, 16) as u32;
        let mut p = Params {
            nodes: if rng.below(2) == 0 { 3 } else { 5 },
            drop_ppm: rng.pick(&[0, 10_000, 50_000, 150_000]),
            dup_ppm: rng.pick(&[0, 10_000, 50_000]),
            delay_max: rng.range(2, 25),
            tail_ppm: rng.pick(&[0, 10_000, 40_000]),
            tail_max: rng.range(30, 400),
            disk_delay_max: rng.range(2, 20),
            fault_interval: rng.pick(&[15, 40, 100, 300]),
            calm_max: rng.pick(&[2, 300, 1_000, 3_000]),
            burst_max: rng.pick(&[200, 1_000, 5_000]),
            w_crash: rng.range(0, 10),
            w_partition: rng.range(0, 10),
            w_storm: rng.range(0, 3),
            w_slow_disk: rng.range(0, 3),
            w_pause: rng.range(0, 4),
            crash_after_send_ppm: rng.pick(&[0, 0, 3_000, 10_000]),
            crash_down_max: rng.pick(&[30, 200, 1500]),
            partition_max: rng.pick(&[200, 800, 3000]),
            client_interval: rng.range(3, 25),
            read_pct: rng.range(20, 60),
            snapshot_pct: rng.range(2, 12),
            transfer_pct: rng.pick(&[0, 0, 1, 3]),
            snapshot_gap: rng.range(2, 30),
            snapshot_trailing: rng.range(0, 6),
            pre_vote: rng.below(5) != 0,
            check_quorum: rng.below(5) != 0,
            heartbeat: rng.range(1, 4) as u32,
            election_min,
            // Often one entry per message, so a new leader's no-op travels apart from the
            // older entries before it (the Figure 8 interleavings need that).
            max_msg_bytes: rng.pick(&[40, 40, 100, 400, 4_000]),
            max_inflight: rng.range(1, 8) as usize,
            max_uncommitted: rng.pick(&[8, 32, 128]),
            max_apply_bytes: rng.range(33, 600),
            snapshot_chunk_bytes: rng.pick(&[16, 40, 1 << 20]),
            leader_crash_pct: 35,
            membership_pct: rng.pick(&[0, 0, 2, 5]),
            spare_nodes: 0,
            isolate_ppm: rng.pick(&[0, 0, 10_000]),
            crash_after_vote_ppm: rng.pick(&[0, 0, 50_000, 200_000]),
            election_spread: if rng.below(4) == 0 { 5 } else { election_min },
            profile: "mixed",
            lease_read_pct: 0,
        };
        match rng.below(10) {
            // 6.824's Figure8Unreliable: leaders crash soon after accepting writes and come
            // back quickly, one entry per message, so old-term entries spread without the new
            // leader's no-op; also where a vote or ack sent before it is durable gets lost.
            0..=2 => {
                p.profile = "figure8";
                p.w_crash = 10;
                p.w_partition = rng.range(0, 3);
                p.w_storm = 0;
                p.w_pause = 0;
                p.leader_crash_pct = 80;
                p.crash_after_send_ppm = rng.pick(&[10_000, 30_000]);
                p.crash_down_max = rng.pick(&[30, 100, 300]);
                p.max_msg_bytes = 40;
                p.isolate_ppm = rng.pick(&[30_000, 100_000]);
                p.partition_max = rng.pick(&[200, 800]);
                p.max_inflight = rng.range(1, 3) as usize;
                p.drop_ppm = rng.pick(&[50_000, 150_000]);
                p.tail_ppm = 40_000;
                p.client_interval = rng.range(2, 8);
                p.fault_interval = rng.pick(&[30, 80, 200]);
            }
            // Partitions and paused processes: deposed leaders that do not know it yet,
            // with plenty of reads sent their way.
            3..=5 => {
                p.profile = "partitions";
                p.w_crash = rng.range(0, 2);
                p.w_partition = 10;
                p.w_pause = rng.range(2, 8);
                p.crash_after_send_ppm = 0;
                p.read_pct = rng.range(40, 70);
                p.partition_max = rng.pick(&[400, 1_500, 4_000]);
            }
            _ => {}
        }
        if p.membership_pct > 0 {
            p.spare_nodes = 2;
        }
        // Drawn last, so that every earlier knob of a seed stays what it was.
        p.lease_read_pct = rng.pick(&[0, 30, 70]);
        p
    }
}
