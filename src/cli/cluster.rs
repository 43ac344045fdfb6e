//! `raftlog cluster`: a whole local cluster as child processes, for trying raftlog out.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::config::{ClusterConfig, NodeAddrs};

struct Planned {
    id: u64,
    raft_addr: SocketAddr,
    api_addr: SocketAddr,
}

/// The first `count` nodes of the file; more are added on the ports after the highest.
fn plan(config: &ClusterConfig, count: usize) -> Result<Vec<Planned>, String> {
    let mut nodes: Vec<Planned> = config
        .nodes()
        .iter()
        .take(count)
        .map(|(id, n)| Planned {
            id: *id,
            raft_addr: n.raft_addr,
            api_addr: n.api_addr,
        })
        .collect();
    let max_id = config.nodes().keys().max().copied().unwrap_or(0);
    let port = |f: fn(&crate::config::NodeAddrs) -> u16| {
        config.nodes().values().map(f).max().unwrap_or(7000)
    };
    let (raft_port, api_port) = (port(|n| n.raft_addr.port()), port(|n| n.api_addr.port()));
    let after = |port: u16, extra: u64| {
        u16::try_from(u64::from(port) + extra)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| {
                format!(
                    "{count} nodes need ports past 65535 after port {port}: use fewer \
                     --nodes or lower ports in the cluster file"
                )
            })
    };
    for extra in 1..=count.saturating_sub(nodes.len()) as u64 {
        nodes.push(Planned {
            id: max_id + extra,
            raft_addr: after(raft_port, extra)?,
            api_addr: after(api_port, extra)?,
        });
    }
    Ok(nodes)
}

/// With `--tls`, certificates from `certs init` under `<data_dir>/certs` (made on the first
/// run, reused after); without it, a `tls` section of the user's file with its paths made
/// absolute, since the generated file lives elsewhere.
fn tls_for_cluster_file(
    config: ClusterConfig,
    config_path: &Path,
    data_dir: &Path,
    nodes: &[Planned],
    tls: bool,
) -> Result<ClusterConfig, String> {
    use crate::config::TlsFiles;
    if tls {
        let certs = data_dir.join("certs");
        if !certs.join("ca.pem").exists() {
            let highest = nodes.iter().map(|n| n.id).max().unwrap_or(1);
            crate::security::certs::init(highest, &certs).map_err(|e| e.to_string())?;
        }
        for n in nodes {
            let cert = certs.join(format!("node-{}.pem", n.id));
            if !cert.exists() {
                return Err(format!(
                    "{} is missing: the certificates in {} were made for fewer nodes; remove                      that directory to make a new set",
                    cert.display(),
                    certs.display()
                ));
            }
        }
        return Ok(config.with_tls(TlsFiles {
            ca: "certs/ca.pem".into(),
            cert: "certs/node-{id}.pem".into(),
            key: "certs/node-{id}-key.pem".into(),
        }));
    }
    let Some(files) = config.tls().cloned() else {
        return Ok(config);
    };
    let base = config_path.parent().unwrap_or(Path::new("."));
    let absolute = |p: &str| -> Result<String, String> {
        std::path::absolute(base.join(p))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| format!("cannot resolve tls path {p}: {e}"))
    };
    Ok(config.with_tls(TlsFiles {
        ca: absolute(&files.ca)?,
        cert: absolute(&files.cert)?,
        key: absolute(&files.key)?,
    }))
}

/// Runs the cluster until Ctrl-C or SIGTERM; returns the exit status.
pub fn run(config_path: &Path, count: usize, tls: bool) -> i32 {
    if count == 0 {
        eprintln!("raftlog cluster: --nodes must be at least 1");
        return EXIT_USAGE;
    }
    let config = match ClusterConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("raftlog cluster: {e}");
            return EXIT_USAGE;
        }
    };
    let nodes = match plan(&config, count) {
        Ok(nodes) => nodes,
        Err(message) => {
            eprintln!("raftlog cluster: {message}");
            return EXIT_USAGE;
        }
    };
    let data_dir = config.data_dir().to_path_buf();
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        eprintln!("raftlog cluster: cannot create {}: {e}", data_dir.display());
        return EXIT_FAILED;
    }
    let cluster_file = data_dir.join("cluster.json");
    // The nodes read `cluster_file`, in `data_dir`: TLS paths must be relative to it.
    let config = match tls_for_cluster_file(config, config_path, &data_dir, &nodes, tls) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("raftlog cluster: {message}");
            return EXIT_FAILED;
        }
    };
    let file_nodes = nodes
        .iter()
        .map(|n| {
            let addrs = NodeAddrs {
                raft_addr: n.raft_addr,
                api_addr: n.api_addr,
            };
            (n.id, addrs)
        })
        .collect();
    let text = config.clone().with_nodes(file_nodes).to_json();
    if let Err(e) = std::fs::write(&cluster_file, text) {
        eprintln!(
            "raftlog cluster: cannot write {}: {e}",
            cluster_file.display()
        );
        return EXIT_FAILED;
    }
    let mut children = BTreeMap::new();
    for n in &nodes {
        match spawn_node(&cluster_file, &data_dir, n.id) {
            Ok(child) => {
                children.insert(n.id, child);
            }
            Err(message) => {
                eprintln!("raftlog cluster: {message}");
                stop_all(&mut children);
                return EXIT_FAILED;
            }
        }
    }
    println!(
        "raftlog cluster \"{}\": {} nodes, data under {}",
        config.cluster_id(),
        nodes.len(),
        data_dir.display()
    );
    let scheme = if config.tls().is_some() {
        "https"
    } else {
        "http"
    };
    for n in &nodes {
        // Issue 17: the live page's address on the first screen, so that the README's
        // second command is opening it.
        println!(
            "  node {}: live page {scheme}://{}/ui  api {scheme}://{}  raft {}  log {}",
            n.id,
            n.api_addr,
            n.api_addr,
            n.raft_addr,
            data_dir.join(format!("node-{}.log", n.id)).display()
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftlog cluster: cannot start the async runtime: {e}");
            stop_all(&mut children);
            return EXIT_FAILED;
        }
    };
    // Issue 16: with TLS the API is HTTPS; the demo trusts the cluster CA and presents the
    // admin client certificate made beside it, when there is one.
    let https = match config.tls().map(|files| data_dir.join(&files.ca)) {
        None => None,
        Some(ca) => {
            let dir = ca.parent().unwrap_or(Path::new(".")).to_path_buf();
            let (cert, key) = (
                dir.join("client-admin.pem"),
                dir.join("client-admin-key.pem"),
            );
            let client_cert =
                (cert.exists() && key.exists()).then_some((cert.as_path(), key.as_path()));
            match super::identity::https_config(&ca, client_cert) {
                Ok(config) => Some(config),
                Err(message) => {
                    eprintln!("raftlog cluster: {message}");
                    stop_all(&mut children);
                    return EXIT_FAILED;
                }
            }
        }
    };
    let status = runtime.block_on(supervise(&nodes, &mut children, &cluster_file, https));
    stop_all(&mut children);
    status
}

fn spawn_node(cluster_file: &Path, data_dir: &Path, id: u64) -> Result<Child, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the raftlog executable: {e}"))?;
    let log_path = data_dir.join(format!("node-{id}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(cluster_file)
        .arg("--id")
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child
        // when this supervisor dies, so no node outlives a killed `raftlog cluster`.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    command
        .spawn()
        .map_err(|e| format!("cannot start node {id}: {e}"))
}

fn stop_all(children: &mut BTreeMap<u64, Child>) {
    for child in children.values() {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (id, child) in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!("raftlog cluster: node {id} did not stop within 5 s; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn supervise(
    nodes: &[Planned],
    children: &mut BTreeMap<u64, Child>,
    cluster_file: &Path,
    https: Option<rustls::ClientConfig>,
) -> i32 {
    let scheme = if https.is_some() { "https" } else { "http" };
    let builder = crate::security::tls::http_client_builder().timeout(Duration::from_secs(2));
    let builder = match https {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    let client = builder.build().unwrap_or_else(|_| reqwest::Client::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(leader) = find_leader(&client, scheme, nodes).await {
            break leader;
        }
        if let Some(message) = exited(children) {
            eprintln!("raftlog cluster: {message}");
            return EXIT_FAILED;
        }
        if Instant::now() > deadline {
            eprintln!("raftlog cluster: no leader after 20 s; see the node logs above");
            return EXIT_FAILED;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("node {leader} leads");
    demo(&client, scheme, nodes, leader).await;
    println!();
    println!("Try it (in another terminal):");
    println!(
        "  raftlog put greeting hello --config {}",
        cluster_file.display()
    );
    println!("  raftlog get greeting --config {}", cluster_file.display());
    println!("  raftlog status --config {}", cluster_file.display());
    // Issue 17: the live page, on any node.
    if let Some(first) = nodes.first() {
        println!("Watch it live: {scheme}://{}/ui", first.api_addr);
    }
    println!("Ctrl-C stops the cluster.");
    // Listeners made once: tokio delivers a signal only to listeners that exist when it
    // arrives, and ones made afresh each turn leave a gap between turns.
    let interrupted = tokio::signal::ctrl_c();
    let terminated = sigterm();
    tokio::pin!(interrupted, terminated);
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = &mut terminated => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(message) = exited(children) {
                    eprintln!("raftlog cluster: {message}; stopping the others");
                    return EXIT_FAILED;
                }
            }
        }
    }
    println!("stopping the cluster");
    0
}

async fn sigterm() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

fn exited(children: &mut BTreeMap<u64, Child>) -> Option<String> {
    for (id, child) in children.iter_mut() {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(format!("node {id} exited ({status}); its log says why"));
        }
    }
    None
}

async fn find_leader(client: &reqwest::Client, scheme: &str, nodes: &[Planned]) -> Option<u64> {
    for n in nodes {
        let url = format!("{scheme}://{}/v1/status", n.api_addr);
        if let Ok(response) = client.get(url).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if status["role"] == "leader" {
                    return status["id"].as_u64();
                }
            }
        }
    }
    None
}

/// Shows replication at work: write through a follower, read back from another node.
async fn demo(client: &reqwest::Client, scheme: &str, nodes: &[Planned], leader: u64) {
    let writer = nodes.iter().find(|n| n.id != leader).unwrap_or(&nodes[0]);
    let reader = nodes
        .iter()
        .rev()
        .find(|n| n.id != writer.id)
        .unwrap_or(&nodes[0]);
    let put = client
        .put(format!("{scheme}://{}/v1/kv/hello", writer.api_addr))
        .body("world")
        .send()
        .await;
    match put {
        Ok(r) if r.status().is_success() => {
            let body = r.text().await.unwrap_or_default();
            println!("PUT hello=world via node {}: {body}", writer.id);
        }
        Ok(r) => {
            println!(
                "PUT hello=world via node {} answered {}",
                writer.id,
                r.status()
            );
            return;
        }
        Err(e) => {
            println!("PUT hello=world via node {} failed: {e}", writer.id);
            return;
        }
    }
    match client
        .get(format!("{scheme}://{}/v1/kv/hello", reader.api_addr))
        .send()
        .await
    {
        Ok(r) => {
            let index = r
                .headers()
                .get("x-raft-index")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            println!(
                "GET hello via node {} (linearizable, index {index}): {body}",
                reader.id
            );
        }
        Err(e) => println!("GET hello via node {} failed: {e}", reader.id),
    }
}
