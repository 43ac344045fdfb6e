//! One failover trial, measured the same way for raftlog and etcd (issue 14): a single
//! client puts in a loop, each request to the next endpoint in turn with a short timeout;
//! the leader's process is SIGKILLed; the result is the time from the kill to the
//! completion of the first put sent after it. The caller restarts the killed node between
//! trials (it knows how it started it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::etcd::{Requests, System};
use super::load::{connect, leader_index};
use super::wire::Connection;
use super::Consistency;
use super::{EXIT_FAILED, EXIT_USAGE};

/// `raftlog bench failover` parameters.
#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The system measured: raftlog or etcd.
    #[arg(long = "target", value_enum, default_value = "raftlog")]
    pub system: System,
    /// HOST:PORT of each node's client endpoint (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Process id of each node, in the order of --endpoints; the leader's is killed.
    #[arg(long, value_delimiter = ',', required = true)]
    pub pids: Vec<u32>,
    /// Client timeout of each put, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub timeout_ms: u64,
    /// How long the put loop runs before the kill (at least until one put succeeded),
    /// milliseconds.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Give up when no put succeeds this long after the kill, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub give_up_ms: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
}

/// What the put loop saw.
#[derive(Default)]
struct Loop {
    /// When the leader was killed; set once.
    killed_at: Option<Instant>,
    succeeded_before_kill: u64,
    failed_after_kill: u64,
    /// Kill to the completion of the first put sent after it.
    failover: Option<Duration>,
}

/// Runs one trial; prints the failover time in milliseconds (or a JSON object).
pub async fn run(args: FailoverArgs, as_json: bool) -> i32 {
    if args.endpoints.len() != args.pids.len() || args.endpoints.len() < 2 {
        eprintln!(
            "raftlog bench failover: give one --pids entry per --endpoints entry, at least two \
             of each (got {} endpoints, {} pids)",
            args.endpoints.len(),
            args.pids.len()
        );
        return EXIT_USAGE;
    }
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().trim_start_matches("http://").to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(leader) = leader_index(args.system, &endpoints).await {
            break leader;
        }
        if Instant::now() > deadline {
            eprintln!(
                "raftlog bench failover: no leader among {} after 10 s; is the cluster up?",
                endpoints.join(", ")
            );
            return EXIT_FAILED;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = Arc::new(Mutex::new(Loop::default()));
    let timeout = Duration::from_millis(args.timeout_ms);
    let put_loop = tokio::spawn(put_loop(
        endpoints.clone(),
        Requests::new(args.system, args.value_size, Consistency::Linearizable),
        timeout,
        state.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let pid = args.pids[leader];
    // The kill waits for a put to succeed: on a busy machine a fresh cluster's first puts
    // can take longer than the client timeout.
    let settle_deadline = Instant::now() + Duration::from_secs(10);
    while lock(&state).succeeded_before_kill == 0 {
        if Instant::now() > settle_deadline {
            put_loop.abort();
            eprintln!(
                "raftlog bench failover: no put succeeded in the {} ms before the kill \
                 (timeout {} ms each); the cluster at {} is not serving writes, nothing was \
                 killed",
                args.settle_ms + 10_000,
                args.timeout_ms,
                endpoints.join(", ")
            );
            return EXIT_FAILED;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        put_loop.abort();
        eprintln!(
            "raftlog bench failover: cannot SIGKILL the leader's process {pid} ({}): {}",
            endpoints[leader],
            std::io::Error::last_os_error()
        );
        return EXIT_FAILED;
    }
    lock(&state).killed_at = Some(Instant::now());
    let give_up = Duration::from_millis(args.give_up_ms);
    let finished = tokio::time::timeout(give_up, put_loop).await;
    let state = lock(&state);
    let Some(failover) = state.failover.filter(|_| matches!(finished, Ok(Ok(())))) else {
        eprintln!(
            "raftlog bench failover: no put succeeded within {} ms of killing the leader \
             (pid {pid}, {}); {} puts failed",
            args.give_up_ms, endpoints[leader], state.failed_after_kill
        );
        return EXIT_FAILED;
    };
    let millis = failover.as_secs_f64() * 1000.0;
    if as_json {
        println!(
            "{}",
            json!({
                "target": args.system.name(),
                "failover_ms": millis,
                "killed_endpoint": endpoints[leader],
                "killed_index": leader,
                "killed_pid": pid,
                "failed_puts_after_kill": state.failed_after_kill,
            })
        );
    } else {
        println!("{millis:.1}");
        eprintln!(
            "killed the leader {} (pid {pid}); the first put sent after it completed {millis:.1} ms \
             later; {} puts failed in between",
            endpoints[leader], state.failed_after_kill
        );
    }
    0
}

fn lock(state: &Mutex<Loop>) -> std::sync::MutexGuard<'_, Loop> {
    // A poisoned lock means the put loop panicked; its counters are still plain numbers.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Puts until the first put sent after the kill succeeds.
async fn put_loop(
    endpoints: Vec<String>,
    requests: Requests,
    timeout: Duration,
    state: Arc<Mutex<Loop>>,
) {
    let mut connections: Vec<Option<Connection>> = endpoints.iter().map(|_| None).collect();
    for key in 1u64.. {
        let i = key as usize % endpoints.len();
        let sent = Instant::now();
        let killed_at = lock(&state).killed_at;
        // The whole attempt, connecting included, gets the client timeout.
        let attempt = tokio::time::timeout(timeout, async {
            let connection = match connections[i].as_mut() {
                Some(open) => open,
                None => connections[i].insert(connect(&endpoints[i], timeout).await?),
            };
            connection.exchange(&requests.put(key), timeout).await
        })
        .await;
        let ok = matches!(attempt, Ok(Ok((status, _))) if (200..300).contains(&status));
        if !ok || connections[i].as_ref().is_some_and(|c| !c.is_reusable()) {
            connections[i] = None;
        }
        let done = Instant::now();
        {
            let mut state = lock(&state);
            match (killed_at, ok) {
                (Some(killed), true) if sent >= killed => {
                    state.failover = Some(done - killed);
                    return;
                }
                (Some(_), false) => state.failed_after_kill += 1,
                (None, true) => state.succeeded_before_kill += 1,
                _ => {}
            }
        }
        if !ok {
            // A refused connection fails at once: a short pause keeps the loop from spinning
            // without hiding the moment the cluster recovers.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
