//! Deterministic simulation of Raft clusters under hostile faults (see `tests/sim/mod.rs`).
//!
//! Default run (`cargo test --release --test simulation`): 2,000 seeds, each a 3- or
//! 5-node cluster driven through 20,000 faulty steps (events), then healed and required to make
//! progress; split over four tests so they run in parallel. Plus determinism and the
//! `planted_*` tests, which switch on a deliberately broken rule in the core and require the
//! simulator to catch it.
//!
//! Environment:
//! - `RAFTLOG_SIM_SEED=<n>` replays one seed exactly, printing its full event trace (add
//!   `RAFTLOG_SIM_PLANTED=<PlantedBug variant>` to replay a planted-bug finding). Every
//!   failure prints the exact command.
//! - `RAFTLOG_SIM_SEEDS=<n>` runs `n` seeds instead of 2,000; `RAFTLOG_SIM_SEED_BASE=<n>`
//!   starts at another seed; `RAFTLOG_SIM_STEPS=<n>` changes the faulty steps per seed.
//!
//! Soak (100,000 fresh seeds; about 45 minutes on this 2-core machine while other builds
//! run, see docs/BENCHMARKS.md):
//! `RAFTLOG_SIM_SEEDS=100000 RAFTLOG_SIM_SEED_BASE=1000000000 cargo test --release --test simulation seeds_ -- --nocapture`

mod sim;

use std::time::Instant;

use raftlog::raft::PlantedBug;
use sim::{parse_planted, replay_command, run, run_traced, SimOptions};

const DEFAULT_SEEDS: u64 = 2_000;
const PARTS: u64 = 4;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(value) => Some(value),
        Err(e) => panic!("{name}={text:?} is not a number ({e}); unset it or give an integer"),
    }
}

fn replaying() -> bool {
    std::env::var("RAFTLOG_SIM_SEED").is_ok()
}

fn options(seed: u64) -> SimOptions {
    let mut options = SimOptions::new(seed);
    if let Some(steps) = env_u64("RAFTLOG_SIM_STEPS") {
        options.fault_steps = steps;
    }
    options
}

/// Runs this part's share of the seeds; fails with every report (up to three).
fn run_part(part: u64) {
    if replaying() {
        eprintln!("skipped: replaying one seed (RAFTLOG_SIM_SEED)");
        return;
    }
    let total = env_u64("RAFTLOG_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let base = env_u64("RAFTLOG_SIM_SEED_BASE").unwrap_or(0);
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut seeds, mut steps, mut leaders, mut acked, mut reads, mut installs) =
        (0, 0, 0, 0, 0, 0);
    let mut worst_converge = (0, 0);
    let mut memberships = 0;
    for seed in (base + part..base + total).step_by(PARTS as usize) {
        seeds += 1;
        match run(&options(seed)) {
            Ok(stats) => {
                steps += stats.steps;
                leaders += stats.leaders_elected;
                acked += stats.acked_writes;
                reads += stats.reads_served;
                installs += stats.snapshots_installed;
                memberships += stats.membership_changes;
                if stats.heal_to_converged_ticks > worst_converge.0 {
                    worst_converge = (stats.heal_to_converged_ticks, seed);
                }
            }
            Err(failure) => {
                eprintln!("{}", failure.report());
                failures.push(failure);
                if failures.len() >= 3 {
                    break;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "part {part}: {seeds} seeds, {steps} steps in {secs:.1}s ({:.0} seeds/min, {:.0} steps/s); \
         {leaders} leaders elected, {acked} writes acknowledged, {reads} reads served, \
         {installs} snapshots installed, {memberships} membership changes committed; slowest convergence after heal: {} ticks (seed {})",
        seeds as f64 * 60.0 / secs,
        steps as f64 / secs,
        worst_converge.0,
        worst_converge.1
    );
    if !failures.is_empty() {
        let summary: Vec<String> = failures
            .iter()
            .map(|f| format!("seed {} ({}): {}", f.seed, f.invariant, f.replay_command()))
            .collect();
        panic!("{} seed(s) failed:\n{}", failures.len(), summary.join("\n"));
    }
}

#[test]
fn seeds_part_0() {
    run_part(0);
}

#[test]
fn seeds_part_1() {
    run_part(1);
}

#[test]
fn seeds_part_2() {
    run_part(2);
}

#[test]
fn seeds_part_3() {
    run_part(3);
}

/// `RAFTLOG_SIM_SEED=<n> [RAFTLOG_SIM_PLANTED=<bug>]`: replays one seed with its full trace.
#[test]
fn replay_seed() {
    let Some(seed) = env_u64("RAFTLOG_SIM_SEED") else {
        return;
    };
    let planted = std::env::var("RAFTLOG_SIM_PLANTED").ok().map(|name| {
        parse_planted(&name).unwrap_or_else(|| {
            panic!(
                "RAFTLOG_SIM_PLANTED={name:?} is not a PlantedBug variant; use one of {:?}",
                PlantedBug::ALL
            )
        })
    });
    let mut options = options(seed);
    options.planted_bug = planted;
    options.keep_full_trace = true;
    let (result, trace) = run_traced(&options);
    eprintln!("full trace of seed {seed}:\n{trace}");
    match result {
        Ok(stats) => eprintln!("seed {seed} passed: {stats:?}"),
        Err(failure) => panic!("{}", failure.report()),
    }
}

/// Same seed, same run: the trace hash covers every event, message and time.
#[test]
fn same_seed_same_trace() {
    if replaying() {
        return;
    }
    let mut hashes = Vec::new();
    for seed in [7, 7, 8] {
        let stats = match run(&options(seed)) {
            Ok(stats) => stats,
            Err(failure) => panic!("{}", failure.report()),
        };
        hashes.push((stats.trace_hash, stats.steps, stats.sim_time));
    }
    assert_eq!(
        hashes[0], hashes[1],
        "seed 7 ran twice with different traces"
    );
    assert_ne!(
        hashes[0].0, hashes[2].0,
        "seeds 7 and 8 produced the same trace hash"
    );
}

/// Runs one seed that once failed, with the schedule of the soak that found it (before
/// the issue 10 membership operations and the issue 11 clock stalls, which change the
/// runs); it must pass now.
fn regression(seed: u64) {
    if replaying() {
        return;
    }
    let mut options = options(seed);
    options.membership_ops = false;
    options.clock_stalls = false;
    if let Err(failure) = run(&options) {
        panic!("{}", failure.report());
    }
}

// Thesis §4.2.3: servers removed while cut off never learn of their removal and keep asking
// for votes with ever higher terms. With PreVote and CheckQuorum both off, nothing made the
// remaining members ignore them, so every leader was deposed before it could commit (terms
// climbed to 280-311 and no write committed within 1,000 ticks of the heal).

#[test]
fn removed_servers_do_not_disrupt_seed_8888000178() {
    regression(8_888_000_178);
}

#[test]
fn removed_servers_do_not_disrupt_seed_5555022801() {
    regression(5_555_022_801);
}

#[test]
fn removed_servers_do_not_disrupt_seed_5555089955() {
    regression(5_555_089_955);
}

/// The Raft safety properties (and their client-visible consequences) a planted bug may
/// break. Other failures (a core panic, a broken driver contract) do not count as noticing it.
const SAFETY: &[&str] = &[
    "election safety",
    "log matching",
    "leader completeness",
    "state machine safety",
    "committed entries are never rewritten",
    "linearizable read",
    "acknowledged write",
    "acknowledged writes survive",
    "one vote per term",
    "durable before acknowledged",
    "votes of voters elect",
    "commit quorum of voters",
    "one membership change in flight",
];

/// Runs seeds with `bug` planted in every core until the checker reports a violation;
/// fails if none does within `budget` seeds. A violation only counts if the same seed
/// breaks a safety property (a panic inside the core does not count: the checker has to
/// notice) and the same seed passes without the planted bug (else it is a bug of the core
/// itself, which the `seeds_part_*` tests report).
fn find_planted(bug: PlantedBug, budget: u64) {
    if replaying() {
        return;
    }
    let started = Instant::now();
    let (mut other, mut unrelated) = (0, 0);
    for (n, seed) in (1_000_000..1_000_000 + budget).enumerate() {
        let mut options = options(seed);
        options.planted_bug = Some(bug);
        options.ring_events = 40;
        match run(&options) {
            Ok(_) => {}
            Err(failure) if !SAFETY.contains(&failure.invariant) => other += 1,
            Err(failure) => {
                let mut control = options.clone();
                control.planted_bug = None;
                if run(&control).is_err() {
                    unrelated += 1;
                    continue;
                }
                eprintln!(
                    "planted {bug:?}: found after {} seed(s) in {:.1}s ({other} non-safety failures and \
                     {unrelated} that also fail without the bug skipped): {}\n  {}\n  replay: {}",
                    n + 1,
                    started.elapsed().as_secs_f64(),
                    failure.invariant,
                    failure.detail,
                    replay_command(seed, Some(bug))
                );
                return;
            }
        }
    }
    panic!(
        "the simulator did not notice planted bug {bug:?} in {budget} seeds ({other} runs ended in a \
         core panic or contract failure and {unrelated} failed without the bug too; neither counts)"
    );
}

#[test]
fn planted_commit_old_term_by_count() {
    find_planted(PlantedBug::CommitOldTermByCount, 2_000);
}

#[test]
fn planted_vote_without_log_check() {
    find_planted(PlantedBug::VoteWithoutLogCheck, 2_000);
}

#[test]
fn planted_vote_before_persist() {
    find_planted(PlantedBug::VoteBeforePersist, 2_000);
}

#[test]
fn planted_read_index_without_quorum() {
    find_planted(PlantedBug::ReadIndexWithoutQuorum, 2_000);
}

#[test]
fn planted_membership_change_before_own_term_commit() {
    find_planted(PlantedBug::MembershipChangeBeforeOwnTermCommit, 2_000);
}

#[test]
fn planted_link_lost_ends_lease() {
    find_planted(PlantedBug::LinkLostEndsLease, 2_000);
}

/// How often each planted bug is caught, over `RAFTLOG_SIM_SEEDS` seeds (default 200) each:
/// a measure of how hostile the fault schedules are. Not run by default:
/// `cargo test --release --test simulation planted_detection_rates -- --ignored --nocapture`
#[test]
#[ignore]
fn planted_detection_rates() {
    let seeds = env_u64("RAFTLOG_SIM_SEEDS").unwrap_or(200);
    let only = std::env::var("RAFTLOG_SIM_PLANTED").ok();
    for bug in PlantedBug::ALL {
        if only
            .as_deref()
            .is_some_and(|name| parse_planted(name) != Some(bug))
        {
            continue;
        }
        let started = Instant::now();
        let mut by_invariant: std::collections::BTreeMap<&str, u64> = Default::default();
        let mut triggered = 0;
        for seed in 1_000_000..1_000_000 + seeds {
            let mut options = options(seed);
            options.planted_bug = Some(bug);
            options.ring_events = 1;
            let invariant = match run(&options) {
                Ok(stats) => {
                    triggered += u64::from(stats.old_term_commits > 0);
                    "(none)"
                }
                Err(failure) => {
                    if std::env::var("RAFTLOG_SIM_VERBOSE").is_ok() {
                        eprintln!(
                            "  {bug:?} seed {seed} ({} nodes, {}): {}",
                            failure.stats.nodes, failure.stats.profile, failure.invariant
                        );
                    }
                    failure.invariant
                }
            };
            *by_invariant.entry(invariant).or_default() += 1;
        }
        eprintln!(
            "{bug:?}: {seeds} seeds in {:.1}s: {by_invariant:?} (passing seeds where a leader committed an old-term entry: {triggered})",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Per-seed figures, to tune the fault schedules:
/// `cargo test --release --test simulation seed_stats -- --ignored --nocapture`
#[test]
#[ignore]
fn seed_stats() {
    let seeds = env_u64("RAFTLOG_SIM_SEEDS").unwrap_or(20);
    for seed in 1_000_000..1_000_000 + seeds {
        match run(&options(seed)) {
            Ok(s) => eprintln!(
                "seed {seed}: {} {} nodes, time {} ({} ticks), leaders {}, max term {}, crashes {}, partitions {}, committed {}, acked {}, reads {}, installs {}, delivered {}, dropped {}",
                s.profile, s.nodes, s.sim_time, s.sim_time / 10, s.leaders_elected, s.max_term, s.crashes, s.partitions, s.committed, s.acked_writes, s.reads_served, s.snapshots_installed, s.messages_delivered, s.messages_dropped
            ),
            Err(f) => eprintln!("seed {seed}: {} {}", f.invariant, f.detail),
        }
    }
}

/// A simulator bug, not a core one: a stall that began the instant the previous one ended,
/// before the node had run, restarted the count of owed ticks, so the resumed leader was
/// handed 4 ticks for 45 ticks of standing still and served a lease read its lease no longer
/// covered ("stale read" at step 17825). Found by the 100,000-seed soak at base 3141000000.
#[test]
fn chained_stalls_owe_every_missed_tick_seed_3141080560() {
    replay_must_pass(3_141_080_560);
}

/// Simulator bugs, not core ones: at the heal the harness shut down for good a node that no
/// configuration it could see named, while a configuration adding it (appended 4 ticks
/// before the heal) was still travelling to another log. It committed, and convergence then
/// waited for the node that could never run ("broke liveness" after 1,000 ticks, although
/// the other members applied every write). Found by the soak at base 3141000000.
#[test]
fn retired_member_does_not_block_convergence_seed_3141064700() {
    replay_must_pass(3_141_064_700);
}

#[test]
fn retired_member_does_not_block_convergence_seed_3141054451() {
    replay_must_pass(3_141_054_451);
}

/// Core bugs in the regressed-follower rule (issue 12), found by the soak at base
/// 6363000000: a follower that acknowledged 85 and held a longer log of an older term from
/// 86 on rejected AppendEntries at 86 with the fast-backtracking hint 75 (the first index
/// of that term); the leader counted hints below its match index as proof of a lost log
/// and flagged it ("no false log regression"). Only a follower whose last index is below
/// the match index counts now.
#[test]
fn a_longer_log_with_an_old_term_is_no_regression_seed_6363009367() {
    replay_must_pass(6_363_009_367);
}

#[test]
fn a_longer_log_with_an_old_term_is_no_regression_seed_6363054811() {
    replay_must_pass(6_363_054_811);
}

/// A leader removing a member held its lease on the one other voter of its new
/// configuration; that voter crashed, restarted within a tick and at once granted its vote
/// to the member being removed, which won while the old leader, cut off, still served lease
/// reads: a stale read. Found by the soak at base 6565000000 (the first with the link-loss
/// hints, which only changed the schedule: the vote came from the restart). Fixed in
/// `in_lease`: a restarted voter counts itself inside a lease for a minimum election
/// timeout (thesis §6.4.1).
#[test]
fn restarted_voter_keeps_the_lease_it_gave_seed_6565037337() {
    replay_must_pass(6_565_037_337);
}

fn replay_must_pass(seed: u64) {
    if replaying() {
        return;
    }
    if let Err(failure) = run(&options(seed)) {
        panic!("{}", failure.report());
    }
}

/// A voter whose demotion was appended but not committed sat out elections as a "learner"
/// although it held the only log that could win; two stale candidates, each missing the
/// other's configuration, refused each other while their terms climbed past 180 (3 and 5
/// nodes, PreVote off). Found by the soak at base 2718000000; fixed in `promotable`
/// (thesis §4.2.2: a server leaves when its removal commits, not when it is appended).
#[test]
fn voter_with_uncommitted_demotion_still_stands_seed_2718018620() {
    replay_must_pass(2_718_018_620);
}

#[test]
fn voter_with_uncommitted_demotion_still_stands_seed_2718034740() {
    replay_must_pass(2_718_034_740);
}

/// One line per run that pins it down bit for bit (the trace hash covers every event,
/// message and time), so a refactoring of the simulator or of a driver can be shown to
/// leave every run as it was: record the lines before, again after, and `diff` them.
/// Covers the CI seeds (0..`RAFTLOG_SIM_SEEDS`, default 2,000), 200 soak-range seeds, the
/// regression seeds, and the first 100 seeds the `planted_*` tests try for every bug.
/// `cargo test --release --test simulation trace_fingerprints -- --ignored --nocapture 2>&1 | grep '^fingerprint'`
#[test]
#[ignore]
fn trace_fingerprints() {
    let seeds = env_u64("RAFTLOG_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut runs: Vec<SimOptions> = (0..seeds)
        .chain(1_000_000..1_000_200)
        .chain([
            2_718_018_620,
            2_718_034_740,
            3_141_054_451,
            3_141_064_700,
            3_141_080_560,
        ])
        .map(options)
        .collect();
    for seed in [8_888_000_178, 5_555_022_801, 5_555_089_955] {
        let mut old_schedule = options(seed);
        old_schedule.membership_ops = false;
        old_schedule.clock_stalls = false;
        runs.push(old_schedule);
    }
    for bug in PlantedBug::ALL {
        for seed in 1_000_000..1_000_100 {
            let mut planted = options(seed);
            planted.planted_bug = Some(bug);
            planted.ring_events = 40;
            runs.push(planted);
        }
    }
    for options in &runs {
        let line = match run(options) {
            Ok(s) => format!(
                "ok hash {:016x} steps {} time {} leaders {} committed {} acked {} reads {} installs {}",
                s.trace_hash, s.steps, s.sim_time, s.leaders_elected, s.committed, s.acked_writes, s.reads_served, s.snapshots_installed
            ),
            Err(f) => format!(
                "failed {:?} at step {} time {} hash {:016x}: {}",
                f.invariant, f.step, f.time, f.stats.trace_hash, f.detail
            ),
        };
        eprintln!(
            "fingerprint seed {} planted {:?} membership_ops {} clock_stalls {}: {line}",
            options.seed, options.planted_bug, options.membership_ops, options.clock_stalls
        );
    }
}
