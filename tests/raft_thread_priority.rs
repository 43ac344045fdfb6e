//! The raft loop runs on a thread of its own (`raftlog-raft`) at nice −10 by default
//! (`raft_thread_nice`), so that a node short of CPU still sends its heartbeats and acks
//! in time (src/node/raft_thread.rs). Without the privilege to raise a priority the node
//! says so in its log and runs on; `raft_thread_nice: 0` leaves the priority alone.

mod support;

use std::time::Duration;

use support::{runtime, Cluster, ClusterSpec};

const WARNING: &str = "cannot set the raft thread's priority";

/// The nice value and scheduling policy of each thread of `pid` named `name` (from /proc:
/// the 19th and 41st fields of a task's `stat` (proc(5)), counted after the parenthesised
/// name, which may hold spaces). Policy 0 is SCHED_OTHER, 3 SCHED_BATCH.
fn thread_priorities(pid: u32, name: &str) -> Vec<(i64, u32)> {
    let mut priorities = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's /proc tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("task stat");
        let after_name = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 2..];
        // Fields from the 3rd (state) on.
        let fields: Vec<&str> = after_name.split(' ').collect();
        let nice = fields[19 - 3].parse().expect("nice is an integer");
        let policy = fields[41 - 3].parse().expect("policy is an integer");
        priorities.push((nice, policy));
    }
    priorities
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn raft_loop_runs_on_its_own_thread_at_raised_priority() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        for id in 1..=3 {
            let pid = cluster.pid(id).expect("node runs");
            let threads = thread_priorities(pid, "raftlog-raft");
            let log = cluster.log_text(id);
            if running_as_root() {
                assert_eq!(
                    threads,
                    vec![(-10, SCHED_BATCH)],
                    "node {id} (pid {pid}): expected one raftlog-raft thread at nice -10 under \
                     SCHED_BATCH\n{log}"
                );
                assert!(!log.contains(WARNING), "node {id} warned as root:\n{log}");
            } else {
                // Unprivileged: the thread exists at the default priority and the node
                // says why and what to do.
                assert_eq!(
                    threads,
                    vec![(0, SCHED_OTHER)],
                    "node {id} (pid {pid})\n{log}"
                );
                assert!(log.contains(WARNING), "node {id} did not warn:\n{log}");
                assert!(log.contains("CAP_SYS_NICE"), "node {id}:\n{log}");
            }
        }
    });
}

#[test]
fn raft_thread_nice_zero_leaves_the_priority_alone() {
    runtime().block_on(async {
        let cluster = Cluster::start_with_config(
            ClusterSpec::default(),
            serde_json::json!({"raft_thread_nice": 0}),
        );
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        for id in 1..=3 {
            let pid = cluster.pid(id).expect("node runs");
            let log = cluster.log_text(id);
            assert_eq!(
                thread_priorities(pid, "raftlog-raft"),
                vec![(0, SCHED_OTHER)],
                "node {id}\n{log}"
            );
            assert!(!log.contains(WARNING), "node {id}:\n{log}");
        }
    });
}
