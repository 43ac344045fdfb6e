//! `raftlog bench` against real nodes: the load generator counts every request it sends
//! and the data it reports written is there; `bench failover` kills the leader it names and
//! times a put that a new leader answered; bad combinations are usage errors.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{raftlog_bin, runtime, Cluster, ClusterSpec};

fn bench(args: &[&str]) -> (i32, Value, String) {
    let output = Command::new(raftlog_bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("run raftlog bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let report = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report, stderr)
}

#[test]
fn bench_counts_every_request_and_writes_what_it_reports() {
    let cluster = Cluster::start(ClusterSpec::default());
    let rt = runtime();
    rt.block_on(cluster.wait_for_leader(Duration::from_secs(20)));
    let config = cluster.config_path.to_string_lossy().to_string();
    let (status, report, stderr) = bench(&[
        "--config",
        &config,
        "--op",
        "mixed",
        "--read-ratio",
        "0.5",
        "--requests",
        "300",
        "--clients",
        "8",
        "--key-space",
        "20",
        "--prefill",
        "--value-size",
        "10",
        "--json",
    ]);
    assert_eq!(status, 0, "{stderr}\n{report}\n{}", cluster.logs_tail());
    // Clients are spread over every node of the cluster file.
    assert_eq!(
        report["endpoints"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert_eq!(report["ops"], 300, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let (writes, reads) = (
        report["writes"].as_u64().unwrap_or(0),
        report["reads"].as_u64().unwrap_or(0),
    );
    assert_eq!(writes + reads, 300, "{report}");
    assert!(writes > 50 && reads > 50, "a 50/50 mix: {report}");
    // --prefill wrote every key first, so no read found a key missing.
    assert_eq!(report["not_found"], 0, "{report}");
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
    let max = report["latency_ms"]["max"].as_f64().unwrap_or(0.0);
    assert!(p50 > 0.0 && max >= p50, "{report}");
    rt.block_on(async {
        for key in 0..20 {
            let value = cluster
                .get(1, &format!("bench-{key}"), "linearizable")
                .await;
            assert_eq!(value, Ok(Some("x".repeat(10))), "bench-{key}");
        }
    });
}

#[test]
fn bench_failover_kills_the_leader_and_times_the_first_put_after_it() {
    let cluster = Cluster::start(ClusterSpec::default());
    let rt = runtime();
    let leader = rt.block_on(cluster.wait_for_leader(Duration::from_secs(20)));
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let endpoints: Vec<String> = ids.iter().map(|id| cluster.api(*id).to_string()).collect();
    let pids: Vec<String> = ids
        .iter()
        .map(|id| cluster.pid(*id).expect("running").to_string())
        .collect();
    let (status, report, stderr) = bench(&[
        "failover",
        "--endpoints",
        &endpoints.join(","),
        "--pids",
        &pids.join(","),
        // The comparison uses 100 ms; a test on a machine shared with builds needs slack.
        "--timeout-ms",
        "1000",
        "--json",
    ]);
    assert_eq!(status, 0, "{stderr}\n{}", cluster.logs_tail());
    let killed = report["killed_index"].as_u64().expect("killed_index") as usize;
    assert_eq!(ids[killed], leader, "it must kill the leader: {report}");
    assert!(
        cluster.wait_exit(leader, Duration::from_secs(5)).is_some(),
        "the leader's process is still running after the trial"
    );
    let failover_ms = report["failover_ms"].as_f64().unwrap_or(-1.0);
    // No put can succeed before a new leader is elected: at least one election timeout
    // (150 ms minimum) after the kill.
    assert!(
        (100.0..20_000.0).contains(&failover_ms),
        "failover {failover_ms} ms: {report}"
    );
    let new_leader = rt.block_on(cluster.wait_for_leader(Duration::from_secs(10)));
    assert_ne!(new_leader, leader);
}

#[test]
fn bench_refuses_what_it_cannot_measure_as_usage_errors() {
    let cases: [&[&str]; 4] = [
        &["--target", "etcd", "--op", "get", "--consistency", "lease"],
        &["--clients", "0", "--endpoints", "127.0.0.1:1"],
        &["--read-ratio", "1.5", "--endpoints", "127.0.0.1:1"],
        &[
            "failover",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--pids",
            "1",
        ],
    ];
    for args in cases {
        let (status, _, stderr) = bench(args);
        assert_eq!(status, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("raftlog bench"), "{args:?}: {stderr}");
    }
}

/// At a terminal (a pseudo-terminal from util-linux's `script`) `raftlog bench` draws a live
/// line with the phase, ops/s and errors while it runs, and clears it before the report.
#[test]
fn bench_draws_live_progress_at_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("bench_cli: skipped the terminal check: `script` (util-linux) is missing");
        return;
    }
    let cluster = Cluster::start(ClusterSpec::default());
    runtime().block_on(cluster.wait_for_leader(Duration::from_secs(20)));
    let command = format!(
        "{} bench --config {} --clients 4 --warmup 1 --duration 2 --value-size 16",
        raftlog_bin().display(),
        cluster.config_path.display()
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run raftlog bench under script");
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench at a terminal: {terminal}");
    for shown in ["warmup:", "measuring:", "ops/s", "errors"] {
        assert!(
            terminal.contains(shown),
            "the live line never showed {shown:?}; the terminal saw:\n{terminal}"
        );
    }
}
