//! Process-level test harness: real `raftlog serve` processes on 127.0.0.1, free ports,
//! temporary data directories, and a small HTTP client.
#![allow(dead_code)]

pub mod tmpfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary under test: `RAFTLOG_TEST_BIN` if set (to run a test against an older
/// build and see it fail before a fix), else the one cargo built.
pub fn raftlog_bin() -> PathBuf {
    match std::env::var_os("RAFTLOG_TEST_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(env!("CARGO_BIN_EXE_raftlog")),
    }
}

/// The harness's HTTP client: over HTTPS (`tls`) it checks no server certificate, since
/// what these tests check is the cluster's behaviour, and a CA rotation
/// (`tls_rotation.rs`) changes the certificates under a running load; the HTTPS rules
/// themselves are checked by `tests/client_auth.rs` with a real verifier.
pub fn test_client(tls: bool) -> reqwest::Client {
    raftlog::security::tls::install_crypto_provider();
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let builder = if tls {
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        builder.use_preconfigured_tls(config)
    } else {
        builder
    };
    builder.build().unwrap()
}

/// Accepts any server certificate (test harness only; see [`test_client`]).
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A port nobody listens on right now, never handed out twice by this test process.
///
/// Asking the kernel for port 0 and releasing it is not enough: tests run in parallel, and
/// two clusters could be given the same port before either node binds it, after which one
/// test talks to the other's nodes. Ports come from a process-wide counter below the
/// kernel's ephemeral range (so outgoing connections never take them), offset by the pid so
/// that leftovers of another run are unlikely to sit there, and each is checked bindable.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 64) * 160;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        let port = (base + offset) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One node process.
pub struct NodeProc {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub child: Mutex<Option<Child>>,
    pub log_path: PathBuf,
}

/// A cluster of real processes; every process is killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub client: reqwest::Client,
    /// `https` when the cluster file has `tls` (issue 16: the client API is HTTPS then).
    pub scheme: &'static str,
}

/// Settings that tests change.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: u64,
    pub snapshot_threshold: u64,
    pub snapshot_trailing_entries: u64,
    pub wal_segment_bytes: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            snapshot_threshold: 10_000,
            snapshot_trailing_entries: 5_000,
            wal_segment_bytes: 64 << 20,
        }
    }
}

impl Cluster {
    /// Writes a config with free ports and starts every node.
    pub fn start(spec: ClusterSpec) -> Cluster {
        Cluster::start_with_config(spec, json!({}))
    }

    /// As [`Cluster::start`], with the fields of the object `extra` added to the cluster
    /// file (e.g. `json!({"snapshot_request_timeout_ms": 1})`).
    pub fn start_with_config(spec: ClusterSpec, extra: Value) -> Cluster {
        let cluster = Cluster::configure_with(spec, extra);
        for id in cluster.nodes.keys() {
            cluster.spawn(*id);
        }
        cluster
    }

    /// Writes a config with free ports and starts no node, so a test can prepare the
    /// data directories (or the config) first.
    pub fn configure(spec: ClusterSpec) -> Cluster {
        Cluster::configure_with(spec, json!({}))
    }

    /// As [`Cluster::configure`], with the fields of `extra` added to the cluster file.
    pub fn configure_with(spec: ClusterSpec, extra: Value) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes_json = serde_json::Map::new();
        let mut nodes = BTreeMap::new();
        for id in 1..=spec.nodes {
            let raft_addr = format!("127.0.0.1:{}", free_port());
            let api_addr = format!("127.0.0.1:{}", free_port());
            nodes_json.insert(
                id.to_string(),
                json!({"raft_addr": raft_addr, "api_addr": api_addr}),
            );
            nodes.insert(
                id,
                NodeProc {
                    id,
                    api_addr,
                    raft_addr,
                    child: Mutex::new(None),
                    log_path: dir.path().join(format!("node-{id}.log")),
                },
            );
        }
        let mut config = json!({
            "cluster_id": "test-cluster",
            "nodes": Value::Object(nodes_json),
            "data_dir": dir.path().join("data"),
            "snapshot_threshold": spec.snapshot_threshold,
            "snapshot_trailing_entries": spec.snapshot_trailing_entries,
            "wal_segment_bytes": spec.wal_segment_bytes,
            // Issue 14: these tests count on `snapshot_threshold` alone deciding when a
            // snapshot starts; the default minimum interval (1 s) would hold them back, and
            // the default byte threshold (64 MiB) would snapshot tests that write large
            // values (log_page_bounds saw its log compacted under it).
            "snapshot_min_interval_ms": 0,
            "snapshot_threshold_bytes": 1u64 << 40,
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        // Issue 16: `RAFTLOG_TEST_TLS=1` runs every process test with mutual TLS between the
        // nodes (certificates for ids up to 9, so tests that add nodes have theirs too).
        if std::env::var("RAFTLOG_TEST_TLS").is_ok_and(|v| v == "1") && config.get("tls").is_none()
        {
            let certs = dir.path().join("certs");
            let status = Command::new(raftlog_bin())
                .args(["certs", "init", "--nodes", "9", "--out"])
                .arg(&certs)
                .stdout(Stdio::null())
                .status()
                .expect("run raftlog certs init");
            assert!(status.success(), "raftlog certs init failed: {status}");
            config["tls"] = json!({"ca": "certs/ca.pem", "cert": "certs/node-{id}.pem", "key": "certs/node-{id}-key.pem"});
        }
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let tls = config.get("tls").is_some_and(|t| !t.is_null());
        let client = test_client(tls);
        Cluster {
            dir,
            config_path,
            nodes,
            client,
            scheme: if tls { "https" } else { "http" },
        }
    }

    /// Sets a top-level field of the cluster file; nodes read it when they (re)start.
    pub fn set_config_field(&self, field: &str, value: Value) {
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&self.config_path).unwrap()).unwrap();
        config[field] = value;
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn spawn(&self, id: u64) {
        self.spawn_with(id, &[], &[]);
    }

    /// Starts node `id` with extra `serve` arguments (e.g. `--join ADDR`).
    pub fn spawn_with_args(&self, id: u64, extra: &[&str]) {
        self.spawn_with(id, extra, &[]);
    }

    /// Starts node `id` with extra environment variables (e.g. a test-only fault switch).
    pub fn spawn_with_env(&self, id: u64, env: &[(&str, &str)]) {
        self.spawn_with(id, &[], env);
    }

    /// Starts node `id` with extra `serve` arguments and environment variables.
    pub fn spawn_with(&self, id: u64, extra: &[&str], env: &[(&str, &str)]) {
        self.spawn_limited(id, extra, env, None);
    }

    /// Starts node `id` with its `RLIMIT_NOFILE` set to `(soft, hard)`, as a systemd unit
    /// (soft 1024) or a container (hard 1024) would start it.
    pub fn spawn_with_nofile_limit(&self, id: u64, soft: u64, hard: u64) {
        self.spawn_limited(id, &[], &[], Some((soft, hard)));
    }

    fn spawn_limited(
        &self,
        id: u64,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) {
        use std::os::unix::process::CommandExt;
        let node = &self.nodes[&id];
        let mut slot = node.child.lock().unwrap();
        assert!(slot.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let mut command = Command::new(raftlog_bin());
        command
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .args(extra)
            // Tests read the info lines; RAFTLOG_TEST_LOG (a RUST_LOG filter) adds more when
            // a failure needs it, e.g. `info,raftlog::raft=debug`.
            .env(
                "RUST_LOG",
                std::env::var("RAFTLOG_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .env("RAFTLOG_TEST_FAULTS", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((soft, hard)) = nofile {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe, as code between fork and exec must be;
            // `limit` is a plain value copied into the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn raftlog serve");
        *slot = Some(child);
    }

    /// Node `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        let slot = self.nodes[&id].child.lock().unwrap();
        slot.as_ref().map(|child| child.id())
    }

    /// Sends `signal` to node `id`'s process. For SIGSTOP, returns only once every thread
    /// of it has stopped: kill(2) returns as soon as the signal is queued, and the stop
    /// spreads to the other threads only when the one thread chosen to take it next runs,
    /// which on a loaded machine can be milliseconds later, while the others go on serving
    /// (a test once saw the "stopped" leader commit a write 0.9 ms after kill returned).
    pub fn signal(&self, id: u64, signal: i32) {
        let slot = self.nodes[&id].child.lock().unwrap();
        let child = slot.as_ref().expect("node is running");
        let pid = child.id();
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
        if signal == libc::SIGSTOP {
            wait_until_stopped(pid);
        }
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&self, id: u64) {
        let taken = self.nodes[&id].child.lock().unwrap().take();
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for a clean exit (status 0).
    pub fn terminate(&self, id: u64) -> std::process::ExitStatus {
        let taken = self.nodes[&id].child.lock().unwrap().take();
        let mut child = taken.expect("node is running");
        // SAFETY: as in `signal`.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for node `id`'s process to exit on its own; reaps it and
    /// returns its status, or `None` if it is still running (it is left running).
    pub fn wait_exit(&self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut slot = self.nodes[&id].child.lock().unwrap();
                let child = slot.as_mut().expect("node was started");
                if let Some(status) = child.try_wait().unwrap() {
                    *slot = None;
                    return Some(status);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything node `id` wrote to stdout and stderr so far.
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }

    /// Adds node `id` with fresh ports to the cluster file (not started), as an operator
    /// does before starting a new node with `--join`. Running nodes are not affected: after
    /// their first start, the membership in their log wins.
    pub fn add_to_config(&mut self, id: u64) {
        assert!(
            !self.nodes.contains_key(&id),
            "node {id} is already configured"
        );
        let raft_addr = format!("127.0.0.1:{}", free_port());
        let api_addr = format!("127.0.0.1:{}", free_port());
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&self.config_path).unwrap()).unwrap();
        config["nodes"][id.to_string()] = json!({"raft_addr": raft_addr, "api_addr": api_addr});
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let log_path = self.dir.path().join(format!("node-{id}.log"));
        self.nodes.insert(
            id,
            NodeProc {
                id,
                api_addr,
                raft_addr,
                child: Mutex::new(None),
                log_path,
            },
        );
    }

    pub fn api(&self, id: u64) -> &str {
        &self.nodes[&id].api_addr
    }

    /// The CLI flags that reach this cluster's API: `--cacert` under `tls` (the CA made by
    /// `RAFTLOG_TEST_TLS=1` or a test, in `certs/` beside the cluster file).
    pub fn cli_tls_args(&self) -> Vec<String> {
        if self.scheme == "https" {
            let ca = self.dir.path().join("certs").join("ca.pem");
            vec!["--cacert".into(), ca.to_string_lossy().into_owned()]
        } else {
            Vec::new()
        }
    }

    /// The URL of `path` on node `id`'s client API (`https` under `tls`).
    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.api(id))
    }

    /// Node `id`'s `/metrics` exposition.
    pub async fn metrics_text(&self, id: u64) -> String {
        self.get_quick(id, "/metrics")
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics body")
    }

    /// One unlabelled counter or gauge of node `id`'s `/metrics`; panics, showing the
    /// exposition, when it is missing.
    pub async fn metric(&self, id: u64, name: &str) -> u64 {
        let text = self.metrics_text(id).await;
        text.lines()
            .find_map(|line| {
                let (metric, value) = line.split_once(' ')?;
                (metric == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("/metrics of node {id} has no {name}:\n{text}"))
    }

    /// The running nodes other than `leader`.
    pub fn followers(&self, leader: u64) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|id| *id != leader)
            .collect()
    }

    /// Cuts node `id` off from its peers or reconnects it (the test-only fault switch
    /// `POST /v1/debug/isolate`, served under `RAFTLOG_TEST_FAULTS=1`).
    pub async fn isolate(&self, id: u64, on: bool) {
        let url = self.url(id, &format!("/v1/debug/isolate?on={on}"));
        let response = self
            .client
            .post(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("isolate node {id}: {e}"));
        assert_eq!(response.status(), 200, "isolate node {id} (on={on})");
    }

    /// A number from node `id`'s `/v1/status` (`term`, `applied_index`, ...); 0 when the
    /// node does not answer.
    pub async fn status_u64(&self, id: u64, field: &str) -> u64 {
        self.status(id)
            .await
            .and_then(|s| s[field].as_u64())
            .unwrap_or(0)
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.lock().unwrap().is_some())
            .map(|n| n.id)
            .collect()
    }

    /// `GET path` on node `id`, if it answers within 500 ms (polling loops must not stall
    /// on a stopped node).
    pub async fn get_quick(&self, id: u64, path: &str) -> Option<reqwest::Response> {
        let url = self.url(id, path);
        self.client
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()
    }

    /// `GET /v1/status` of node `id`, if it answers.
    pub async fn status(&self, id: u64) -> Option<Value> {
        self.get_quick(id, "/v1/status").await?.json().await.ok()
    }

    /// Waits until some running node reports itself leader and the others agree; returns it.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                if let Some(s) = self.status(id).await {
                    if s["role"] == "leader" {
                        leaders.push((s["term"].as_u64().unwrap_or(0), id));
                    }
                }
            }
            leaders.sort();
            if let Some((_, id)) = leaders.last() {
                return *id;
            }
            if Instant::now() > deadline {
                panic!("no leader within {within:?}\n{}", self.logs_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "--- node {} ({}) ---\n{}\n",
                node.id,
                node.log_path.display(),
                tail.join("\n")
            ));
        }
        out
    }

    pub async fn put(&self, id: u64, key: &str, value: &str) -> Result<Value, (u16, String)> {
        let url = self.url(id, &format!("/v1/kv/{key}"));
        answer(self.client.put(url).body(value.to_string()).send().await).await
    }

    pub async fn put_with_id(
        &self,
        id: u64,
        key: &str,
        value: &str,
        request_id: &str,
    ) -> Result<Value, (u16, String)> {
        let url = self.url(id, &format!("/v1/kv/{key}"));
        answer(
            self.client
                .put(url)
                .header("Request-Id", request_id)
                .body(value.to_string())
                .send()
                .await,
        )
        .await
    }

    /// `GET /v1/kv/{key}`: `Ok(Some(value))`, `Ok(None)` for 404, `Err` otherwise.
    pub async fn get(
        &self,
        id: u64,
        key: &str,
        consistency: &str,
    ) -> Result<Option<String>, (u16, String)> {
        let url = self.url(id, &format!("/v1/kv/{key}?consistency={consistency}"));
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| (0, e.to_string()))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| (0, e.to_string()))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err((status, body)),
        }
    }

    pub async fn delete(&self, id: u64, key: &str) -> Result<Value, (u16, String)> {
        let url = self.url(id, &format!("/v1/kv/{key}"));
        answer(self.client.delete(url).send().await).await
    }

    pub async fn cas(
        &self,
        id: u64,
        key: &str,
        expected: Option<&str>,
        value: Option<&str>,
    ) -> Result<Value, (u16, String)> {
        let url = self.url(id, "/v1/cas");
        let body = json!({"key": key, "expected": expected, "value": value});
        answer(self.client.post(url).json(&body).send().await).await
    }

    /// Writes `key` until some node acknowledges it (retrying 503s); panics after `within`.
    pub async fn put_eventually(&self, key: &str, value: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            for id in self.running() {
                match self.put(id, key, value).await {
                    Ok(v) => return v,
                    Err(e) => last = format!("{e:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no node acknowledged {key}={value} within {within:?}: {last}\n{}",
            self.logs_tail()
        );
    }

    /// Makes `to` the leader (through `POST /v1/leader/transfer`) unless it already leads.
    pub async fn make_leader(&self, to: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.wait_for_leader(Duration::from_secs(10)).await != to {
            let url = self.url(to, "/v1/leader/transfer");
            let _ = self
                .client
                .post(url)
                .json(&json!({ "to": to }))
                .send()
                .await;
            assert!(
                Instant::now() < deadline,
                "node {to} never became leader\n{}",
                self.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST /v1/snapshot` on node `id`; panics naming the node and the answer unless 200.
    pub async fn take_snapshot(&self, id: u64) {
        let response = self
            .client
            .post(self.url(id, "/v1/snapshot"))
            .send()
            .await
            .expect("POST /v1/snapshot");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "POST /v1/snapshot on node {id}: {body}");
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(format!("node-{id}"))
    }

    /// Arms storage failpoint `name` on node `id` with `actions` (the `fail` crate's syntax:
    /// `return`, `return(ENOSPC)`, `panic`, `off`) through the test-only
    /// `POST /v1/debug/failpoint`. Panics if the node refuses, e.g. a binary built without
    /// the `failpoints` feature.
    pub async fn set_failpoint(&self, id: u64, name: &str, actions: &str) {
        let url = self.url(
            id,
            &format!("/v1/debug/failpoint?name={name}&actions={actions}"),
        );
        let answer = answer(self.client.post(url).send().await).await;
        assert!(
            answer.is_ok(),
            "node {id} refused failpoint {name}={actions}: {answer:?}"
        );
    }
}

pub async fn answer(result: reqwest::Result<reqwest::Response>) -> Result<Value, (u16, String)> {
    let response = result.map_err(|e| (0, e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| (0, e.to_string()))?;
    if status == 200 {
        serde_json::from_str(&body).map_err(|e| (status, format!("{e}: {body}")))
    } else {
        Err((status, body))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            let taken = node.child.get_mut().map(|c| c.take()).unwrap_or(None);
            if let Some(mut child) = taken {
                // SAFETY: resume a stopped child so that SIGKILL is delivered promptly.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Total size of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&path),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The async runtime process tests run on: two workers, like the machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    raftlog::security::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Repeats `attempt` while it answers 503 (`no_leader`: nothing was proposed, safe to retry,
/// e.g. during a leader change on a loaded machine), for up to 10 s.
pub async fn retry_unavailable<T, F, Fut>(attempt: F) -> Result<T, (u16, String)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, (u16, String)>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match attempt().await {
            Err((503, body)) if Instant::now() < deadline => {
                let _ = body;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Concurrent writers that classify every answer, for tests that disturb a cluster on
/// purpose: each write carries a `Request-Id`, so retrying it after a 503, a dropped
/// connection or a 504 applies it at most once. Writes go round-robin to the running nodes.
pub struct RecordingLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    record: std::sync::Arc<Mutex<LoadRecord>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`RecordingLoad`] saw.
#[derive(Default, Debug, Clone)]
pub struct LoadRecord {
    /// Every acknowledged key and its value.
    pub acknowledged: BTreeMap<String, String>,
    /// When each acknowledgement arrived.
    pub ack_times: Vec<Instant>,
    /// 503 answers (nothing proposed; retried).
    pub unavailable: u64,
    /// Connections refused or cut (retried with the same Request-Id).
    pub connection_errors: u64,
    /// Any other non-200 answer: `(status, body)`.
    pub unexpected: Vec<(u16, String)>,
}

impl LoadRecord {
    /// The longest time without any acknowledged write, between the first and last.
    pub fn longest_write_gap(&self) -> Duration {
        let mut times = self.ack_times.clone();
        times.sort();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

impl RecordingLoad {
    pub fn start(cluster: &std::sync::Arc<Cluster>, writers: usize) -> RecordingLoad {
        RecordingLoad::start_on(cluster, writers, None)
    }

    /// As [`RecordingLoad::start`], with writes sent only to the nodes in `only` (while
    /// they run), e.g. to a follower so that every write is forwarded.
    pub fn start_on(
        cluster: &std::sync::Arc<Cluster>,
        writers: usize,
        only: Option<&[u64]>,
    ) -> RecordingLoad {
        use std::sync::atomic::{AtomicBool, Ordering};
        let only: Option<Vec<u64>> = only.map(<[u64]>::to_vec);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let record = std::sync::Arc::new(Mutex::new(LoadRecord::default()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let cluster = cluster.clone();
            let stop = stop.clone();
            let record = record.clone();
            let only = only.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut turn = w;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("load{w}-{n}");
                    let value = format!("v{w}-{n}");
                    let request_id = format!("load{w}:{n}");
                    // Retry this write until acknowledged (or the load stops).
                    while !stop.load(Ordering::Relaxed) {
                        let mut ids = cluster.running();
                        if let Some(only) = &only {
                            ids.retain(|id| only.contains(id));
                        }
                        if ids.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        turn += 1;
                        let target = ids[turn % ids.len()];
                        let answer = cluster.put_with_id(target, &key, &value, &request_id).await;
                        let acknowledged = {
                            let mut record = record.lock().unwrap();
                            match answer {
                                Ok(_) => {
                                    record.acknowledged.insert(key.clone(), value.clone());
                                    record.ack_times.push(Instant::now());
                                    true
                                }
                                Err((503, _)) => {
                                    record.unavailable += 1;
                                    false
                                }
                                Err((0, _)) => {
                                    record.connection_errors += 1;
                                    false
                                }
                                Err(other) => {
                                    record.unexpected.push(other);
                                    false
                                }
                            }
                        };
                        if acknowledged {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        RecordingLoad {
            stop,
            record,
            tasks,
        }
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> LoadRecord {
        self.record.lock().unwrap().clone()
    }

    /// Stops the writers and returns what they saw.
    pub async fn finish(self) -> LoadRecord {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let record = self.record.lock().unwrap().clone();
        record
    }
}

/// Reads every acknowledged write back through the leader (linearizable); panics naming
/// the first one lost.
pub async fn check_acknowledged_readable(
    cluster: &Cluster,
    acknowledged: &BTreeMap<String, String>,
) {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    for (key, value) in acknowledged {
        let got = retry_unavailable(|| cluster.get(leader, key, "linearizable")).await;
        assert_eq!(
            got.as_ref().ok().and_then(|v| v.as_deref()),
            Some(value.as_str()),
            "acknowledged write {key}={value} lost: {got:?}\n{}",
            cluster.logs_tail()
        );
    }
}

/// Waits until every running node serves every acknowledged write from its own state
/// machine (stale reads, so each node is checked, not the leader for it); panics naming
/// the first write a node still lacks after `within`.
pub async fn check_acknowledged_on_every_node(
    cluster: &Cluster,
    acknowledged: &BTreeMap<String, String>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    for id in cluster.running() {
        for (key, value) in acknowledged {
            loop {
                let got = cluster.get(id, key, "stale").await;
                if got.as_ref().ok().and_then(|v| v.as_deref()) == Some(value.as_str()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} lacks acknowledged write {key} ({} bytes) after {within:?}: \
                     {:?}\n{}",
                    value.len(),
                    got.map(|v| v.map(|v| v.chars().take(40).collect::<String>())),
                    cluster.logs_tail()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A process's resident memory, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: all resident pages.
    pub total_kib: u64,
    /// `RssAnon`: heap and stacks (what buffered requests take).
    pub anon_kib: u64,
    /// `RssFile`: resident pages of mapped files (e.g. mmapped WAL segments).
    pub file_kib: u64,
}

/// Reads `pid`'s resident memory; `None` once the process is gone.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Some(Rss {
        total_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
    })
}

/// `raftlog passwd` with `password` on stdin: the Argon2id hash a cluster file's
/// `auth.users` holds.
pub fn passwd(password: &str) -> String {
    let mut child = std::process::Command::new(raftlog_bin())
        .arg("passwd")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run raftlog passwd");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let output = child.wait_with_output().expect("raftlog passwd");
    assert!(
        output.status.success(),
        "raftlog passwd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Waits until every thread of process `pid` is in the stopped state (`T` in
/// /proc/PID/task/TID/stat), for at most 10 s.
fn wait_until_stopped(pid: u32) {
    let stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // The state follows the command name, which is in parentheses.
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    after_name
                        .split_whitespace()
                        .next()
                        .map(|state| state == "T")
                })
                .unwrap_or(true) // a thread that just exited cannot run either
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped() {
        assert!(
            Instant::now() < deadline,
            "process {pid} was sent SIGSTOP but some of its threads still run after 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
