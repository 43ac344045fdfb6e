//! `benches/compare-etcd.sh --quick` end to end: a fresh 3-node raftlog cluster and a fresh
//! 3-node etcd cluster, every workload of issue 14's table and failover on both. It installs
//! etcd and takes about two minutes, so it runs only with `RAFTLOG_COMPARE_ETCD=1` (see the
//! README, "Tests").

use std::process::Command;

#[test]
fn comparison_with_etcd_runs_every_workload_on_both_systems() {
    if std::env::var("RAFTLOG_COMPARE_ETCD").as_deref() != Ok("1") {
        eprintln!("skipped: set RAFTLOG_COMPARE_ETCD=1 to run the etcd comparison");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare-etcd.sh");
    let output = Command::new("bash")
        .arg(script)
        .args([
            "--quick",
            "--raftlog",
            env!("CARGO_BIN_EXE_raftlog"),
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("run benches/compare-etcd.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "compare-etcd.sh failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    for workload in ["put-1", "put-64", "put-256", "get-64", "mixed-64"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {workload} |")))
            .unwrap_or_else(|| panic!("no row for {workload} in\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | name | raftlog ops/s | lat | cpu | errors | etcd ops/s | lat | cpu | errors | ratio |
        for (system, cell) in [("raftlog", cells[2]), ("etcd", cells[6])] {
            let ops: f64 = cell.parse().unwrap_or(0.0);
            assert!(ops > 0.0, "{workload} on {system}: no throughput in {line}");
        }
        assert!(cells[10].ends_with('×'), "{workload}: no ratio in {line}");
    }
    for system in ["raftlog", "etcd"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {system} |")))
            .unwrap_or_else(|| panic!("no failover row for {system} in\n{stdout}"));
        let median: f64 = line
            .split('|')
            .nth(2)
            .unwrap_or("")
            .trim()
            .parse()
            .unwrap_or(0.0);
        assert!(median > 0.0, "{system}: no failover median in {line}");
    }
}
