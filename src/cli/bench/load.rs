//! The clients: one keep-alive HTTP/1.1 connection each (`wire.rs`, no pool in between),
//! one request in flight, a private histogram and error counts merged at the end. Shared
//! state is a few atomics for the progress line and the request budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::Value;

use super::etcd::{Requests, System};
use super::report::{self, Report};
use super::wire::{Call, Connection};
use super::{BenchArgs, OpKind};

/// Latencies are kept in microseconds, 3 significant digits, up to 10 minutes.
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|e| panic!("histogram bounds 1..600e6 µs, 3 digits are valid: {e}"))
}

/// Issue 16: `--cacert` (with `--cert/--key`): every connection is HTTPS. Set once, before
/// the run; one bench per process.
static HTTPS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

/// Makes every connection of this process's bench HTTPS with `config`.
pub(super) fn use_https(config: Arc<rustls::ClientConfig>) {
    let _ = HTTPS.set(tokio_rustls::TlsConnector::from(config));
}

/// Opens one connection to `addr` (HOST:PORT); the error is its kind, for the report.
pub(super) async fn connect(addr: &str, timeout: Duration) -> Result<Connection, String> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err("connect timeout".into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err("connection refused".into())
        }
        Ok(Err(e)) => return Err(format!("connect failed: {}", e.kind())),
        Ok(Ok(stream)) => stream,
    };
    // One small request per round trip: Nagle would hold the next one back.
    let _ = stream.set_nodelay(true);
    let Some(https) = HTTPS.get() else {
        return Ok(Connection::new(stream, addr));
    };
    // The verifier checks the chain to the cluster CA, not the name (nodes' certificates
    // name raftlog-node-<id>); the name is only sent as SNI.
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .or_else(|_| rustls::pki_types::ServerName::try_from("raftlog-node".to_string()))
        .map_err(|e| format!("tls name: {e}"))?;
    let stream = match tokio::time::timeout(timeout, https.connect(name, stream)).await {
        Err(_) => return Err("tls handshake timeout".into()),
        Ok(Err(e)) => return Err(format!("tls handshake failed: {}", e.kind())),
        Ok(Ok(stream)) => stream,
    };
    Ok(Connection::new(stream, addr))
}

/// An error answer's kind: `http 503 overloaded` from raftlog's `{"error": {"code"}}`,
/// `http 503` otherwise.
fn status_kind(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    match code {
        Some(code) => format!("http {status} {code}"),
        None => format!("http {status}"),
    }
}

/// One request and its JSON answer, on a connection of its own (status and leader look-ups).
pub(super) async fn call_json(addr: &str, request: Call) -> Option<Value> {
    let timeout = Duration::from_secs(2);
    let mut connection = connect(addr, timeout).await.ok()?;
    let (status, body) = connection.exchange(&request, timeout).await.ok()?;
    if !(200..300).contains(&status) {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

fn request(method: &'static str, path: &'static str, body: &'static str) -> Call {
    Call {
        method,
        path: path.to_string(),
        body: Bytes::from_static(body.as_bytes()),
        json: false,
        authorization: None,
    }
}

/// The index in `endpoints` of the current leader, if one answers.
pub(super) async fn leader_index(system: System, endpoints: &[String]) -> Option<usize> {
    match system {
        System::Raftlog => {
            for addr in endpoints {
                let Some(status) = call_json(addr, request("GET", "/v1/status", "")).await else {
                    continue;
                };
                let leader = status["leader_id"].as_u64()?;
                let leader_addr = status["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"].as_u64() == Some(leader))
                    .and_then(|m| m["api_addr"].as_str().map(str::to_string))?;
                return endpoints.iter().position(|e| *e == leader_addr);
            }
            None
        }
        System::Etcd => {
            // Each member's status names itself (header.member_id) and the leader; the
            // gateway prints uint64s as strings.
            for (i, addr) in endpoints.iter().enumerate() {
                let status = call_json(addr, request("POST", "/v3/maintenance/status", "{}")).await;
                if let Some(status) = status {
                    if status["leader"].is_string()
                        && status["leader"] == status["header"]["member_id"]
                    {
                        return Some(i);
                    }
                }
            }
            None
        }
    }
}

/// What one client counted in the measured interval.
struct ClientResult {
    histogram: Histogram<u64>,
    writes: u64,
    reads: u64,
    not_found: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

/// Live counters for the progress line and the `--requests` budget.
#[derive(Default)]
struct Shared {
    answered: AtomicU64,
    failed: AtomicU64,
    /// Measured requests still to send (`--requests`); unused otherwise.
    remaining: AtomicI64,
    stop: AtomicBool,
}

/// The fixed parameters every client shares.
struct Plan {
    requests: Requests,
    op: OpKind,
    read_ratio: f64,
    key_space: u64,
    timeout: Duration,
    measure_start: Instant,
    /// `None` with `--requests`: the budget ends the run.
    measure_end: Option<Instant>,
}

/// A 64-bit LCG (Knuth's MMIX constants): enough to spread keys and pick reads, and cheap.
fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 11
}

async fn client(
    index: usize,
    endpoint: String,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
) -> ClientResult {
    let mut result = ClientResult {
        histogram: new_histogram(),
        writes: 0,
        reads: 0,
        not_found: 0,
        errors: BTreeMap::new(),
        last_done: None,
    };
    let mut random = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut connection: Option<Connection> = None;
    loop {
        let now = Instant::now();
        if shared.stop.load(Ordering::Relaxed) || plan.measure_end.is_some_and(|end| now >= end) {
            break;
        }
        let measured = now >= plan.measure_start;
        if measured
            && plan.measure_end.is_none()
            && shared.remaining.fetch_sub(1, Ordering::Relaxed) <= 0
        {
            break;
        }
        let is_read = match plan.op {
            OpKind::Put => false,
            OpKind::Get => true,
            OpKind::Mixed => {
                (next_random(&mut random) % 1_000_000) as f64 / 1_000_000.0 < plan.read_ratio
            }
        };
        let key = next_random(&mut random) % plan.key_space;
        let sent = Instant::now();
        let outcome = match connection.as_mut() {
            Some(open) => Ok(open),
            None => connect(&endpoint, plan.timeout)
                .await
                .map(|open| connection.insert(open)),
        };
        let outcome = match outcome {
            Ok(open) => {
                let request = if is_read {
                    plan.requests.get(key)
                } else {
                    plan.requests.put(key)
                };
                open.exchange(&request, plan.timeout).await
            }
            Err(kind) => Err(kind),
        };
        let done = Instant::now();
        if connection.as_ref().is_some_and(|open| !open.is_reusable()) {
            // The server closed it after this answer, or the request failed on it.
            connection = None;
        }
        let counts = sent >= plan.measure_start && plan.measure_end.is_none_or(|end| done <= end);
        let error = match outcome {
            Ok((status, _)) if is_read && plan.requests.read_answered(status) => {
                if counts {
                    result.reads += 1;
                    result.not_found += u64::from(status == 404);
                }
                None
            }
            Ok((status, _)) if !is_read && (200..300).contains(&status) => {
                if counts {
                    result.writes += 1;
                }
                None
            }
            Ok((status, body)) => Some(status_kind(status, &body)),
            Err(kind) => {
                // The connection's state is unknown after a timeout or a transport error.
                connection = None;
                Some(kind)
            }
        };
        match error {
            None => {
                shared.answered.fetch_add(1, Ordering::Relaxed);
                if counts {
                    let micros = done.duration_since(sent).as_micros();
                    result.histogram.saturating_record(micros.max(1) as u64);
                    result.last_done = Some(done);
                }
            }
            Some(kind) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if counts {
                    *result.errors.entry(kind).or_insert(0) += 1;
                }
                if connection.is_none() {
                    // A refused or broken endpoint answers at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    result
}

/// Writes every key once, `clients` at a time; the first failure stops the run.
async fn prefill(
    args: &BenchArgs,
    endpoints: &[String],
    requests: &Arc<Requests>,
) -> Result<(), String> {
    let next_key = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients.min(64) {
        let endpoint = endpoints[c % endpoints.len()].clone();
        let (next_key, requests) = (next_key.clone(), requests.clone());
        let (key_space, timeout) = (args.key_space, args.timeout());
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(&endpoint, timeout)
                .await
                .map_err(|kind| format!("prefill: {endpoint}: {kind}"))?;
            loop {
                let key = next_key.fetch_add(1, Ordering::Relaxed);
                if key >= key_space {
                    return Ok(());
                }
                if !connection.is_reusable() {
                    connection = connect(&endpoint, timeout)
                        .await
                        .map_err(|kind| format!("prefill: {endpoint}: {kind}"))?;
                }
                match connection.exchange(&requests.put(key), timeout).await {
                    Ok((status, _)) if (200..300).contains(&status) => {}
                    Ok((status, body)) => {
                        return Err(format!(
                            "prefill: writing key bench-{key} at {endpoint} failed: {}",
                            status_kind(status, &body)
                        ))
                    }
                    Err(kind) => {
                        return Err(format!(
                            "prefill: writing key bench-{key} at {endpoint} failed: {kind}"
                        ))
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("prefill: a client task failed: {e}"))??;
    }
    Ok(())
}

/// Runs the load and returns the report of the measured interval.
pub(super) async fn run(
    args: &BenchArgs,
    endpoints: Vec<String>,
    progress: bool,
    identity: &crate::cli::identity::Identity,
) -> Result<Report, String> {
    let authorization = identity.authorization().cloned();
    let requests = Arc::new(
        Requests::new(args.system, args.value_size, args.consistency)
            .with_authorization(authorization.clone()),
    );
    let leader = leader_index(args.system, &endpoints)
        .await
        .map(|i| endpoints[i].clone());
    let targets = if args.leader_only {
        match &leader {
            Some(leader) => vec![leader.clone()],
            None => {
                return Err(format!(
                    "--leader-only: no node at {} names a leader; is the cluster running?",
                    endpoints.join(", ")
                ))
            }
        }
    } else {
        endpoints.clone()
    };
    if args.prefill {
        prefill(args, &targets, &requests).await?;
    }
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure_start = start + warmup;
    let measure_end = match args.requests {
        Some(_) => None,
        None => Some(measure_start + Duration::from_secs_f64(args.duration)),
    };
    let shared = Arc::new(Shared::default());
    shared.remaining.store(
        args.requests
            .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        Ordering::Relaxed,
    );
    let plan = Arc::new(Plan {
        requests: Requests::new(args.system, args.value_size, args.consistency)
            .with_authorization(authorization),
        op: args.op,
        read_ratio: args.read_ratio,
        key_space: args.key_space,
        timeout: args.timeout(),
        measure_start,
        measure_end,
    });
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let endpoint = targets[c % targets.len()].clone();
            tokio::spawn(client(c, endpoint, plan.clone(), shared.clone()))
        })
        .collect();
    let progress_line = progress.then(|| {
        report::Progress::start(
            shared_counters(&shared),
            warmup,
            args.requests,
            measure_end.map(|end| end - start),
        )
    });
    tokio::time::sleep_until(measure_start.into()).await;
    let cpu_before = report::cpu_seconds(&args.cpu_pids);
    let mut cpu_after = None;
    if let Some(end) = measure_end {
        tokio::time::sleep_until(end.into()).await;
        cpu_after = report::cpu_seconds(&args.cpu_pids);
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut merged = new_histogram();
    let (mut writes, mut reads, mut not_found) = (0, 0, 0);
    let mut errors = BTreeMap::new();
    let mut last_done = measure_start;
    for task in tasks {
        let result = task
            .await
            .map_err(|e| format!("a client task failed: {e}"))?;
        merged
            .add(&result.histogram)
            .map_err(|e| format!("merging latency histograms: {e}"))?;
        writes += result.writes;
        reads += result.reads;
        not_found += result.not_found;
        for (kind, n) in result.errors {
            *errors.entry(kind).or_insert(0) += n;
        }
        last_done = last_done.max(result.last_done.unwrap_or(measure_start));
    }
    if measure_end.is_none() {
        cpu_after = report::cpu_seconds(&args.cpu_pids);
    }
    if let Some(progress) = progress_line {
        progress.finish();
    }
    let seconds = match measure_end {
        Some(end) => end.duration_since(measure_start).as_secs_f64(),
        None => last_done.duration_since(measure_start).as_secs_f64(),
    };
    Ok(Report {
        system: args.system,
        op: args.op,
        consistency: args.consistency,
        read_ratio: args.read_ratio,
        endpoints: targets,
        leader,
        clients: args.clients,
        value_size: args.value_size,
        key_space: args.key_space,
        warmup_seconds: args.warmup,
        seconds,
        writes,
        reads,
        not_found,
        errors,
        latency: merged,
        cpu_pids: args.cpu_pids.clone(),
        cpu_seconds: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| after - before),
    })
}

fn shared_counters(shared: &Arc<Shared>) -> report::Counters {
    let (answered, failed) = (shared.clone(), shared.clone());
    report::Counters {
        answered: Box::new(move || answered.answered.load(Ordering::Relaxed)),
        failed: Box::new(move || failed.failed.load(Ordering::Relaxed)),
    }
}
