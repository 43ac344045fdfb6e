//! `raftlog cluster`, the README's first command (issue 17): as its nodes start it prints
//! every node's live page address, and each of those addresses serves the page, so that a
//! newcomer goes from the README to the live page of a running cluster in two commands.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{free_port, raftlog_bin, runtime};

/// The `raftlog cluster` process and the nodes it started, all in one process group that
/// is SIGKILLed on drop, so that a failing test leaves no node running.
struct ClusterCommand {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything it wrote to stderr so far (why it stopped, if it did).
    errors: Arc<Mutex<String>>,
}

impl ClusterCommand {
    /// `raftlog cluster ARGS --config CONFIG` in its own process group, its stdout read
    /// line by line.
    fn start(args: &[&str], config: &std::path::Path) -> ClusterCommand {
        let mut child = Command::new(raftlog_bin())
            .arg("cluster")
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("raftlog cluster starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let errors = Arc::new(Mutex::new(String::new()));
        let errors_in = Arc::clone(&errors);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut errors = errors_in.lock().unwrap_or_else(|p| p.into_inner());
                errors.push_str(&line);
                errors.push('\n');
            }
        });
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        ClusterCommand {
            child,
            lines,
            errors,
        }
    }

    /// Everything it printed up to the line that says the cluster is up and how to stop
    /// it (the one with "Ctrl-C"); panics after 30 s.
    fn printed_until_up(&self) -> Vec<String> {
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !printed
            .last()
            .is_some_and(|l: &String| l.contains("Ctrl-C"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => printed.push(line),
                Err(e) => panic!(
                    "raftlog cluster did not say it was up within 30 s ({e}); it printed:\n{}\n\
                     on stderr:\n{}\n{}",
                    printed.join("\n"),
                    self.errors.lock().unwrap_or_else(|p| p.into_inner()),
                    node_logs(&printed)
                ),
            }
        }
        printed
    }
}

/// The last lines of every node log the command named (`log PATH` on each node's line).
fn node_logs(printed: &[String]) -> String {
    let mut out = String::new();
    for path in printed.iter().filter_map(|l| l.split(" log ").nth(1)) {
        let text = std::fs::read_to_string(path.trim()).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {path} ---\n"));
        out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
        out.push('\n');
    }
    out
}

impl Drop for ClusterCommand {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we spawned as its leader.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A cluster file in `dir` for `nodes`, with fast timers, its data under `dir/data`.
fn write_config(
    dir: &tempfile::TempDir,
    cluster_id: &str,
    nodes: serde_json::Map<String, serde_json::Value>,
) -> std::path::PathBuf {
    let config = json!({
        "cluster_id": cluster_id,
        "nodes": nodes,
        "data_dir": dir.path().join("data"),
        "heartbeat_interval_ms": 50,
        "election_timeout_ms": [300, 600],
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    config_path
}

#[test]
fn cluster_command_prints_each_nodes_live_page() {
    let dir = tempfile::tempdir().unwrap();
    let api_addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let nodes: serde_json::Map<String, serde_json::Value> = api_addrs
        .iter()
        .enumerate()
        .map(|(i, api)| {
            let raft = format!("127.0.0.1:{}", free_port());
            (
                (i + 1).to_string(),
                json!({"raft_addr": raft, "api_addr": api}),
            )
        })
        .collect();
    let config_path = write_config(&dir, "cluster-command-test", nodes);
    let mut cluster = ClusterCommand::start(&[], &config_path);
    let printed = cluster.printed_until_up();
    let output = printed.join("\n");
    let pages: Vec<String> = api_addrs.iter().map(|a| format!("http://{a}/ui")).collect();
    for (i, page) in pages.iter().enumerate() {
        let node_line = printed
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("node {}:", i + 1)))
            .unwrap_or_else(|| panic!("no line for node {} in:\n{output}", i + 1));
        assert!(
            node_line.contains(&format!("live page {page}")),
            "node {}'s line must name its live page {page}: {node_line:?}\nall output:\n{output}",
            i + 1
        );
    }
    runtime().block_on(async {
        let client = reqwest::Client::new();
        for page in &pages {
            let response = client
                .get(page)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {page} (printed by raftlog cluster): {e}"));
            assert_eq!(response.status(), 200, "GET {page}");
            let body = response.text().await.unwrap();
            assert!(
                body.contains("<title>raftlog: live cluster</title>"),
                "GET {page} did not serve the live page: {}",
                &body[..body.len().min(200)]
            );
        }
    });
    // SAFETY: kill(2) on the child we spawned; it stops its nodes on SIGTERM.
    unsafe { libc::kill(cluster.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "raftlog cluster did not exit within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 16: `raftlog cluster --tls` makes certificates, serves the API over HTTPS, and its
/// demo (a write through a follower, read back from another node) works over HTTPS.
#[test]
fn cluster_command_with_tls_serves_https_and_its_demo_works() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: serde_json::Map<String, serde_json::Value> = (1..=3)
        .map(|id| {
            (
                id.to_string(),
                json!({"raft_addr": format!("127.0.0.1:{}", free_port()),
                       "api_addr": format!("127.0.0.1:{}", free_port())}),
            )
        })
        .collect();
    let config_path = write_config(&dir, "cluster-command-tls-test", nodes);
    let cluster = ClusterCommand::start(&["--tls"], &config_path);
    let printed = cluster.printed_until_up();
    let output = printed.join("\n");
    assert!(output.contains("live page https://"), "{output}");
    let put = printed
        .iter()
        .find(|l| l.starts_with("PUT hello=world via node"));
    assert!(put.is_some_and(|l| l.contains("\"index\"")), "{output}");
    let get = printed.iter().find(|l| l.starts_with("GET hello via node"));
    assert!(get.is_some_and(|l| l.ends_with(": world")), "{output}");
}
