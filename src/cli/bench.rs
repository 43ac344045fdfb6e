//! `raftlog bench`: a closed-loop write load against a running cluster. Each client sends
//! one PUT at a time to the leader; the report gives throughput and latency percentiles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::EXIT_FAILED;

/// Bench parameters.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
}

struct ClientResult {
    latencies_micros: Vec<u32>,
    errors: u64,
}

/// Runs the bench; returns the exit status.
pub async fn run(
    client: &reqwest::Client,
    addrs: &[String],
    args: BenchArgs,
    as_json: bool,
) -> i32 {
    let Some(leader) = leader_addr(client, addrs).await else {
        eprintln!(
            "raftlog bench: no leader found at {}; is the cluster running?",
            addrs.join(", ")
        );
        return EXIT_FAILED;
    };
    let value = "x".repeat(args.value_size);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let (client, leader, value, stop) =
            (client.clone(), leader.clone(), value.clone(), stop.clone());
        let keys = args.keys.max(1);
        tasks.push(tokio::spawn(async move {
            let mut result = ClientResult {
                latencies_micros: Vec::new(),
                errors: 0,
            };
            let mut n = c as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let url = format!("http://{leader}/v1/kv/bench-{}", (n >> 16) % keys);
                let sent = Instant::now();
                match client.put(url).body(value.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        result
                            .latencies_micros
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    _ => result.errors += 1,
                }
            }
            result
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok(result) = task.await {
            latencies.extend(result.latencies_micros);
            errors += result.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let report = json!({
        "leader": leader,
        "clients": args.clients,
        "value_size": args.value_size,
        "seconds": elapsed,
        "writes": latencies.len(),
        "errors": errors,
        "writes_per_second": latencies.len() as f64 / elapsed,
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99), "p999": percentile(0.999), "max": percentile(1.0)},
    });
    if as_json {
        println!("{report}");
    } else {
        println!(
            "{} writes of {} B in {:.1} s from {} clients: {:.0} writes/s, {} errors",
            latencies.len(),
            args.value_size,
            elapsed,
            args.clients,
            latencies.len() as f64 / elapsed,
            errors
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            percentile(0.5),
            percentile(0.9),
            percentile(0.99),
            percentile(0.999),
            percentile(1.0)
        );
    }
    if latencies.is_empty() {
        EXIT_FAILED
    } else {
        0
    }
}

async fn leader_addr(client: &reqwest::Client, addrs: &[String]) -> Option<String> {
    for addr in addrs {
        let Ok(response) = client.get(format!("http://{addr}/v1/status")).send().await else {
            continue;
        };
        let Ok(status) = response.json::<Value>().await else {
            continue;
        };
        let leader = status["leader_id"].as_u64()?;
        return status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(leader))
            .and_then(|m| m["api_addr"].as_str().map(str::to_string));
    }
    None
}
