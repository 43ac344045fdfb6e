//! Tests of [`RaftCore`], one file per family of rules. Each test names the rule it checks
//! and cites the Raft paper (Ongaro & Ousterhout 2014, "In Search of an Understandable
//! Consensus Algorithm", §5–§8) or Ongaro's thesis (2014, "Consensus: Bridging Theory and
//! Practice"), as etcd raft's `paper_test.go` does; tests of this implementation's own rules
//! (persistence order, flow control, storage faults) say what they protect instead.

use super::*;
use crate::raft::test_cluster::{ent, member, storage_with, test_config, voters, Cluster};
use crate::raft::MemStorage;

mod election;
mod link_lost;
mod membership;
mod read;
mod regressed_follower;
mod replication;
mod snapshot;
mod storage_faults;
mod uncommitted_bytes;

fn env(from: NodeId, to: NodeId, message: Message) -> Envelope {
    Envelope { from, to, message }
}

/// A core whose storage holds entries of the given terms.
fn core_with(
    id: NodeId,
    peers: &[NodeId],
    terms: &[u64],
    term: u64,
    tweak: impl Fn(&mut Config),
) -> RaftCore<MemStorage> {
    let storage = storage_with(terms);
    let mut config = test_config(id);
    tweak(&mut config);
    let hs = HardState {
        term,
        voted_for: None,
    };
    let mut core = RaftCore::new(config, storage, hs, voters(peers));
    // A node that has been running a while, not one that just restarted (whose lease from
    // before the restart `restarted_voter_ignores_votes_for_a_minimum_election_timeout`
    // covers).
    core.lease_from_before_start = false;
    core
}

/// Takes a Ready and stores its entries (without reporting them durable).
fn take(core: &mut RaftCore<MemStorage>) -> Ready {
    let rd = core.take_ready();
    core.storage_mut().append(&rd.entries);
    rd
}

fn tick_until(core: &mut RaftCore<MemStorage>, role: Role) {
    for _ in 0..100 {
        if core.status().role == role {
            return;
        }
        core.tick();
    }
    panic!("never became {role:?}: {:?}", core.status());
}

/// Elects node 1 of `peers` by hand (PreVote off), persisting instantly.
fn leader_by_hand(peers: &[NodeId], terms: &[u64], term: u64) -> RaftCore<MemStorage> {
    let mut core = core_with(1, peers, terms, term, |c| c.pre_vote = false);
    tick_until(&mut core, Role::Candidate);
    take(&mut core);
    for &p in &peers[1..] {
        let t = core.status().term;
        core.step(env(
            p,
            1,
            Message::RequestVoteResponse {
                term: t,
                granted: true,
            },
        ));
    }
    assert_eq!(core.status().role, Role::Leader);
    core
}

fn append_response(term: u64, match_index: u64) -> Message {
    Message::AppendEntriesResponse {
        term,
        success: true,
        match_index,
        conflict_term: 0,
        conflict_index: 0,
        read_ctx: 0,
    }
}
