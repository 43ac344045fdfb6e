//! `raftlog bench`: a closed-loop load generator for raftlog and, through etcd v3's HTTP
//! JSON gateway, for etcd, so one tool measures both (issue 14).
//!
//! Each client owns one keep-alive HTTP/1.1 connection to one endpoint (clients are spread
//! over the endpoints in turn) and keeps one request in flight: it sends the next request
//! when the previous answer arrives. Latencies go into an HDR histogram per client, merged
//! at the end; only requests sent after the warmup and answered before the end count.
//!
//! - [`load`]: the clients and the run;
//! - [`etcd`]: the requests of each target system (raftlog's `/v1/kv`, etcd's `/v3/kv`);
//! - [`report`]: throughput, errors by kind, percentiles, CPU per operation;
//! - [`failover`]: one failover trial (SIGKILL the leader, time the first put after it).

mod etcd;
mod failover;
mod load;
mod report;
mod wire;

use std::io::IsTerminal;
use std::time::Duration;

use super::{Target, EXIT_FAILED, EXIT_USAGE};

pub use self::etcd::System;

/// Which requests the clients send.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Writes only.
    Put,
    /// Reads only.
    Get,
    /// Reads with probability --read-ratio, else writes.
    Mixed,
}

/// The read barrier of a get (raftlog's `?consistency=`; etcd: `linearizable` is its default
/// range, `stale` a serializable range, and it has no `lease` reads).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with a quorum (ReadIndex).
    Linearizable,
    /// The leader's lease (raftlog only).
    Lease,
    /// The node's local state.
    Stale,
}

impl Consistency {
    fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// Bench parameters.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Concurrent clients, each with its own connection and one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to measure, seconds (after --warmup).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many measured requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys (`bench-0` ... `bench-K-1`), chosen uniformly.
    #[arg(long = "key-space", visible_alias = "keys", default_value_t = 100_000)]
    pub key_space: u64,
    /// put, get or mixed.
    #[arg(long, value_enum, default_value = "put")]
    pub op: OpKind,
    /// With --op mixed: the share of reads, 0 to 1.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Read barrier of gets: linearizable, lease or stale.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Write every key of --key-space once before the warmup, so gets find values.
    #[arg(long)]
    pub prefill: bool,
    /// The system measured: raftlog or etcd (its v3 HTTP JSON gateway).
    #[arg(long = "target", value_enum, default_value = "raftlog")]
    pub system: System,
    /// HOST:PORT of each endpoint (comma-separated); default: --addr, or every node of
    /// --config for raftlog, 127.0.0.1:2379 for etcd.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// raftlog only: send every request to the leader instead of spreading the clients.
    #[arg(long)]
    pub leader_only: bool,
    /// A request not answered within this many milliseconds counts as a timeout error and
    /// its connection is replaced.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Threads of the generator (1: one thread, the least CPU per request).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Process ids whose CPU time (/proc/PID/stat) over the measured interval is reported,
    /// e.g. the cluster's node processes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
    /// No progress line (it is off anyway with --json or when stdout is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Other measurements.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
}

/// `raftlog bench <mode>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// One failover trial: a 1-client put loop sends each request to the next endpoint in
    /// turn; SIGKILL the leader's process and print the milliseconds from the kill to the
    /// completion of the first put sent after it.
    Failover(failover::FailoverArgs),
}

/// Runs `raftlog bench`; returns the exit status.
pub fn run(target: Target, args: BenchArgs) -> i32 {
    if let Err(message) = args.check() {
        eprintln!("raftlog bench: {message}");
        return EXIT_USAGE;
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftlog bench: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    if let Some(BenchMode::Failover(failover)) = &args.mode {
        let failover = failover.clone();
        return runtime.block_on(failover::run(failover, target.json));
    }
    let endpoints = match endpoints(&target, &args.endpoints, args.system) {
        Ok(endpoints) => endpoints,
        Err(message) => {
            eprintln!("raftlog bench: {message}");
            return EXIT_USAGE;
        }
    };
    let identity = match crate::cli::identity::Identity::from_target(&target) {
        Ok(identity) => identity,
        Err(message) => {
            eprintln!("raftlog bench: {message}");
            return EXIT_USAGE;
        }
    };
    if let Some(config) = identity.tls_config() {
        if args.system == System::Etcd {
            eprintln!("raftlog bench: --cacert works with --target raftlog only");
            return EXIT_USAGE;
        }
        load::use_https(config);
    }
    let progress = !target.json
        && !args.no_progress
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal();
    runtime.block_on(async move {
        match load::run(&args, endpoints, progress, &identity).await {
            Ok(report) => {
                if target.json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                if report.ops() == 0 {
                    eprintln!(
                        "raftlog bench: no request succeeded in the measured interval ({}); \
                         is the cluster running and reachable at {}?",
                        report.errors_summary(),
                        report.endpoints().join(", ")
                    );
                    EXIT_FAILED
                } else {
                    0
                }
            }
            Err(message) => {
                eprintln!("raftlog bench: {message}");
                EXIT_FAILED
            }
        }
    })
}

impl BenchArgs {
    /// Refuses combinations that cannot be run, before anything is sent.
    fn check(&self) -> Result<(), String> {
        if self.mode.is_some() {
            return Ok(());
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if !(self.duration.is_finite() && self.duration > 0.0) && self.requests.is_none() {
            return Err(format!(
                "--duration must be a positive number of seconds, not {}",
                self.duration
            ));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err(format!(
                "--warmup must be zero or more seconds, not {}",
                self.warmup
            ));
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if self.key_space == 0 {
            return Err("--key-space must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio must be between 0 and 1, not {}",
                self.read_ratio
            ));
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        if self.system == System::Etcd {
            if self.consistency == Consistency::Lease && self.op != OpKind::Put {
                return Err(
                    "etcd has no lease reads: use --consistency linearizable or stale \
                     (a serializable range) with --target etcd"
                        .into(),
                );
            }
            if self.leader_only {
                return Err("--leader-only works with --target raftlog only".into());
            }
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `--endpoints`, else `--addr`, else the nodes of `--config` (raftlog) or etcd's default
/// client address; `http://` prefixes are dropped.
fn endpoints(target: &Target, given: &[String], system: System) -> Result<Vec<String>, String> {
    let strip = |e: &str| {
        e.trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    let endpoints: Vec<String> = if !given.is_empty() {
        given.iter().map(|e| strip(e)).collect()
    } else if system == System::Etcd {
        match &target.addr {
            Some(addr) => vec![strip(addr)],
            None => vec!["127.0.0.1:2379".to_string()],
        }
    } else {
        super::client::addresses(target)?
    };
    if let Some(bad) = endpoints.iter().find(|e| e.is_empty() || e.contains('/')) {
        return Err(format!(
            "endpoint {bad:?} is not HOST:PORT (for HTTPS give --cacert, not an https:// URL)"
        ));
    }
    Ok(endpoints)
}
