//! The five-node compose topology (`deploy/compose/`) as five hosts: each service's exact
//! command line and the compose cluster file, run by the real binary in its own network
//! namespace, with the service's `ipv4_address` on a veth attached to one bridge (itself in
//! a namespace of its own, so the host's network is untouched) and the service's volumes
//! bind-mounted where the compose file mounts them (`ip netns exec` gives each node a
//! private mount namespace). Clients run in other nodes' namespaces, so every request
//! crosses the bridge. The cluster elects a leader, serves writes through a follower and
//! linearizable reads from another host, survives a SIGKILL of its leader without losing
//! an acknowledged write, and takes the killed node back with the same command.
//!
//! Needs root and `ip` (iproute2); without them it skips, saying so. CI runs as root.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::raftlog_bin;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct ComposeNode {
    id: u64,
    command: Vec<String>,
    ip: String,
    /// Mount target -> source, as the compose file says.
    volumes: BTreeMap<String, String>,
}

fn compose_nodes() -> Vec<ComposeNode> {
    let text = std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yml"))
        .expect("deploy/compose/docker-compose.yml is readable");
    let mut compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose is YAML");
    compose.apply_merge().expect("merge keys apply");
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    compose["services"]
        .as_mapping()
        .expect("services")
        .values()
        .map(|service| {
            let command = strings(&service["command"]);
            let id = command
                .iter()
                .position(|a| a == "--id")
                .and_then(|i| command.get(i + 1))
                .and_then(|id| id.parse().ok())
                .expect("every service has --id N");
            let volumes = strings(&service["volumes"])
                .iter()
                .map(|v| {
                    let parts: Vec<&str> = v.split(':').collect();
                    (parts[1].to_string(), parts[0].to_string())
                })
                .collect();
            ComposeNode {
                id,
                command,
                ip: service["networks"]["raftlog"]["ipv4_address"]
                    .as_str()
                    .expect("ipv4_address")
                    .to_string(),
                volumes,
            }
        })
        .collect()
}

fn run(args: &[&str]) -> Result<String, String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The namespaces, processes and mount points of one run; all removed on drop.
struct Hosts {
    suffix: u32,
    ids: Vec<u64>,
    children: BTreeMap<u64, Child>,
    created_paths: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl Hosts {
    fn bridge_ns(&self) -> String {
        format!("rlb{}", self.suffix)
    }
    fn ns(&self, id: u64) -> String {
        format!("rln{id}x{}", self.suffix)
    }

    fn build(nodes: &[ComposeNode]) -> Result<Hosts, String> {
        let mut hosts = Hosts {
            suffix: std::process::id() % 100_000,
            ids: Vec::new(),
            children: BTreeMap::new(),
            created_paths: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let bridge = hosts.bridge_ns();
        run(&["ip", "netns", "add", &bridge])?;
        run(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &bridge, "link", "set", "br0", "up"])?;
        for node in nodes {
            let ns = hosts.ns(node.id);
            run(&["ip", "netns", "add", &ns])?;
            hosts.ids.push(node.id);
            let outer = format!("rlv{}x{}", node.id, hosts.suffix);
            let inner = format!("rlp{}x{}", node.id, hosts.suffix);
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["ip", "link", "set", &outer, "netns", &bridge])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&[
                "ip", "-n", &bridge, "link", "set", &outer, "master", "br0", "up",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node.ip),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Bind mounts need their targets to exist; any created here are removed on drop.
        for node in nodes {
            for (target, source) in &node.volumes {
                let target = Path::new(target);
                if target.exists() {
                    continue;
                }
                if source.starts_with("./") {
                    let parent = target.parent().expect("an absolute path");
                    if !parent.exists() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                        hosts.created_paths.push(parent.to_path_buf());
                    }
                    std::fs::write(target, b"").map_err(|e| e.to_string())?;
                } else {
                    std::fs::create_dir_all(target).map_err(|e| e.to_string())?;
                }
                hosts.created_paths.push(target.to_path_buf());
            }
        }
        Ok(hosts)
    }

    /// Starts `node` with its compose command, its volumes mounted as compose mounts them.
    fn start(&mut self, node: &ComposeNode) {
        let mut mounts = String::new();
        for (target, source) in &node.volumes {
            let source = match source.strip_prefix("./") {
                // A file beside the compose file.
                Some(file) => repo().join("deploy/compose").join(file),
                // A named volume: this node's own directory.
                None => {
                    let dir = self.dir.path().join(source);
                    std::fs::create_dir_all(&dir).expect("volume directory");
                    dir
                }
            };
            mounts.push_str(&format!(
                "mount --bind '{}' '{target}' && ",
                source.display()
            ));
        }
        let log = std::fs::File::create(self.dir.path().join(format!("node-{}.log", node.id)))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node.id), "sh", "-c"])
            .arg(format!("{mounts}exec \"$@\""))
            .arg("sh")
            .arg(raftlog_bin())
            .args(&node.command)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("ip netns exec runs");
        self.children.insert(node.id, child);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the raftlog CLI in host `from`'s namespace.
    fn cli(&self, from: u64, args: &[&str]) -> Result<String, String> {
        let bin = raftlog_bin();
        let mut all = vec!["ip", "netns", "exec"];
        let ns = self.ns(from);
        all.push(&ns);
        let bin = bin.to_string_lossy().to_string();
        all.push(&bin);
        all.extend_from_slice(args);
        run(&all)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for id in &self.ids {
            let text = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- node {id}\n"));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for id in self.children.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
        for id in &self.ids {
            let _ = run(&["ip", "netns", "del", &self.ns(*id)]);
        }
        let _ = run(&["ip", "netns", "del", &self.bridge_ns()]);
        for path in self.created_paths.iter().rev() {
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
        }
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need root (CI runs as root)".into());
    }
    if run(&["ip", "-V"]).is_err() {
        return Some("`ip` (iproute2) is missing: apt-get install iproute2".into());
    }
    None
}

/// The leader's id, as some node reports it, asked from `from`'s namespace.
fn leader(hosts: &Hosts, nodes: &[ComposeNode], from: u64) -> Option<(u64, String)> {
    for node in nodes {
        if !hosts.children.contains_key(&node.id) {
            continue;
        }
        let addr = format!("{}:8001", node.ip);
        let Ok(out) = hosts.cli(from, &["status", "--addr", &addr, "--json"]) else {
            continue;
        };
        let statuses: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if let Some(leader) = statuses[0]["leader_id"].as_u64() {
            let ip = nodes.iter().find(|n| n.id == leader)?.ip.clone();
            return Some((leader, ip));
        }
    }
    None
}

fn wait_leader(hosts: &Hosts, nodes: &[ComposeNode], from: u64, not: Option<u64>) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = leader(hosts, nodes, from).filter(|(id, _)| Some(*id) != not) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no leader among the five hosts within 20 s\n{}",
            hosts.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A put through `via`, from `from`'s namespace, retried while the cluster has no leader.
fn put(hosts: &Hosts, from: u64, via: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match hosts.cli(from, &["put", key, value, "--addr", via]) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("put {key} via {via}: {e}\n{}", hosts.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn compose_topology_runs_as_five_hosts_and_survives_a_leader_sigkill() {
    if let Some(why) = skip_reason() {
        eprintln!("deploy_netns: SKIPPED: {why}");
        return;
    }
    let nodes = compose_nodes();
    assert_eq!(nodes.len(), 5, "the compose file runs five nodes");
    let mut hosts = Hosts::build(&nodes).unwrap_or_else(|e| panic!("building the hosts: {e}"));
    for node in &nodes {
        hosts.start(node);
    }
    let (leader_id, _) = wait_leader(&hosts, &nodes, nodes[0].id, None);
    // All five hosts are up and follow that leader, each asked from its neighbour.
    for (i, node) in nodes.iter().enumerate() {
        let from = nodes[(i + 1) % nodes.len()].id;
        let addr = format!("{}:8001", node.ip);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = hosts
                .cli(from, &["status", "--addr", &addr, "--json"])
                .ok()
                .and_then(|out| serde_json::from_str::<Value>(&out).ok());
            if status.as_ref().and_then(|s| s[0]["leader_id"].as_u64()) == Some(leader_id) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} at {addr} does not follow leader {leader_id}: {status:?}\n{}",
                node.id,
                hosts.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let followers: Vec<&ComposeNode> = nodes.iter().filter(|n| n.id != leader_id).collect();
    let via = format!("{}:8001", followers[0].ip);
    let reader = format!("{}:8001", followers[1].ip);
    // Writes through a follower (forwarded across the bridge), from a third host.
    let client = followers[2].id;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("compose-{i}");
        put(&hosts, client, &via, &key, &format!("v{i}"));
        acknowledged.push(key);
    }
    for (i, key) in acknowledged.iter().enumerate() {
        let value = hosts
            .cli(client, &["get", key, "--addr", &reader])
            .unwrap_or_else(|e| panic!("linearizable get {key} via {reader}: {e}"));
        assert_eq!(value.trim(), format!("v{i}"), "{key} via {reader}");
    }
    // SIGKILL the leader; the other four elect another and keep every acknowledged write.
    hosts.kill(leader_id);
    let (new_leader, _) = wait_leader(&hosts, &nodes, client, Some(leader_id));
    assert_ne!(new_leader, leader_id);
    for i in 20..30 {
        let key = format!("compose-{i}");
        put(&hosts, client, &via, &key, &format!("v{i}"));
        acknowledged.push(key);
    }
    for (i, key) in acknowledged.iter().enumerate() {
        let value = hosts
            .cli(client, &["get", key, "--addr", &reader])
            .unwrap_or_else(|e| panic!("get {key} after the SIGKILL: {e}\n{}", hosts.logs()));
        assert_eq!(
            value.trim(),
            format!("v{i}"),
            "{key} lost after the SIGKILL"
        );
    }
    // The killed node comes back with the same command and catches up.
    let killed = nodes
        .iter()
        .find(|n| n.id == leader_id)
        .expect("the killed node");
    hosts.start(killed);
    let own = format!("{}:8001", killed.ip);
    let last = acknowledged.last().expect("writes were made");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = hosts.cli(
            client,
            &["get", last, "--consistency", "stale", "--addr", &own],
        );
        if value.as_deref().map(str::trim) == Ok("v29") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {leader_id} did not catch up after its restart: {value:?}\n{}",
            hosts.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "deploy_netns: five hosts; leader {leader_id} SIGKILLed, node {new_leader} took over, \
         30 acknowledged writes all read back, node {leader_id} caught up after restart"
    );
}
