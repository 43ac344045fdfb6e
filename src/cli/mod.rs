//! The command line (clap). Exit status: 0 success, 1 operation failed, 2 usage or
//! configuration error.

mod bench;
mod certs;
mod client;
mod cluster;
mod completions;
mod identity;
mod join;
mod serve;
mod snapshot_progress;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit status of a failed operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit status of a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;

/// raftlog: a durable, Raft-replicated log and key-value store.
#[derive(Parser, Debug)]
#[command(name = "raftlog", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client command sends its request.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// A node's API address, e.g. 127.0.0.1:8001.
    #[arg(long, global = true)]
    addr: Option<String>,
    /// A cluster file: try each node in turn (default: ./config.json when --addr is absent).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Authenticate as this user of the cluster's `auth` section (HTTP Basic); the password
    /// comes from RAFTLOG_PASSWORD, else from stdin (a prompt at a terminal).
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
    /// Speak HTTPS, trusting the cluster CA in this PEM file (a cluster with `tls`).
    #[arg(long, global = true, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// Present this client certificate (PEM; e.g. client-read.pem from `certs init`): it
    /// proves the role it names. Needs --cacert and --key.
    // Ids other than `cert`/`key`: `put KEY` has a positional of that name.
    #[arg(
        long = "cert",
        global = true,
        value_name = "PEM",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        global = true,
        value_name = "PEM",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Serve {
        /// The cluster file.
        #[arg(long, default_value = "config.json")]
        config: PathBuf,
        /// This node's id (a key of `nodes` in the cluster file).
        #[arg(long)]
        id: u64,
        /// Override the data directory (default: <data_dir>/node-<id> from the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Join a running cluster through these members' API addresses (comma-separated):
        /// added as a learner, promoted once caught up. Harmless once already a member.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        join: Option<String>,
        /// Listen on every interface (0.0.0.0 or ::) at the configured ports, for when the
        /// configured addresses are not this host's own (Kubernetes Service IPs, NAT).
        #[arg(long)]
        bind_all: bool,
    },
    /// Run a whole local cluster as child processes, for trying raftlog out.
    Cluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The cluster file to take addresses and settings from.
        #[arg(long, default_value = "config.json")]
        config: PathBuf,
        /// Mutual TLS between the nodes, with certificates made under <data_dir>/certs.
        #[arg(long)]
        tls: bool,
    },
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value of KEY, or the keys and values of a range (--prefix, --from/--to).
    Get {
        /// The key (omit with --prefix or --from/--to).
        key: Option<String>,
        /// linearizable (default), lease or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        /// Issue 15: every key starting with P.
        #[arg(long, value_name = "P", conflicts_with_all = ["key", "from", "to"])]
        prefix: Option<String>,
        /// Issue 15: keys from A (inclusive).
        #[arg(long, value_name = "A", conflicts_with = "key")]
        from: Option<String>,
        /// Issue 15: keys up to B (exclusive).
        #[arg(long, value_name = "B", conflicts_with = "key")]
        to: Option<String>,
        /// Print at most N pairs of a range.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Print only the keys of a range.
        #[arg(long)]
        keys_only: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Issue 15: print every change to keys starting with PREFIX as it commits ("" for
    /// every key), reconnecting from the last index seen when a stream ends.
    Watch {
        /// The key prefix.
        prefix: String,
        /// The first log index wanted (default: the next change).
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Compare-and-swap: set KEY to NEW if it is EXPECTED.
    Cas {
        /// The key.
        key: String,
        /// The value the key must have (omit with --expect-absent).
        expected: Option<String>,
        /// The new value (omit with --delete).
        new: Option<String>,
        /// The key must be absent.
        #[arg(long)]
        expect_absent: bool,
        /// Delete the key instead of setting it.
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show every node: role, term, commit and applied index, leader.
    Status {
        /// Redraw the table in place until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws, milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Show log entries still in a node's log.
    Log {
        /// First index.
        #[arg(long)]
        from: Option<u64>,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Cluster membership.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Leadership.
    Leader {
        #[command(subcommand)]
        action: LeaderAction,
    },
    /// Snapshot the state machine of the node asked and compact its log.
    Snapshot {
        #[command(flatten)]
        target: Target,
    },
    /// Load a running cluster (raftlog, or etcd with --target etcd) and report throughput,
    /// errors and latency percentiles; `bench failover` times a leader failover.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Print a shell completion script, e.g. `raftlog completions bash > /etc/bash_completion.d/raftlog`.
    Completions {
        /// bash, zsh or fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `raftlog manpage > raftlog.1`.
    Manpage,
    /// Read a password on stdin and print its Argon2id hash, for the cluster file's
    /// `auth.users.NAME.password_hash`.
    Passwd,
    /// TLS certificates (issue 16).
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
}

#[derive(Subcommand, Debug)]
enum CertsAction {
    /// Write a CA, node certificates (node-<id>.pem) and client certificates
    /// (client-<role>.pem for read, write, admin), for trying TLS out.
    Init {
        /// Node certificates for ids 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// The directory to write them to (created if missing; existing files are kept).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum MembersAction {
    /// List members.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Add a member.
    Add {
        /// Its id.
        id: u64,
        /// Its raft address.
        raft_addr: String,
        /// Its API address.
        api_addr: String,
        /// Add as a non-voting learner (default: a voter, promoted once caught up).
        #[arg(long)]
        learner: bool,
        /// Answer once the learner is added, without waiting for its promotion.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        target: Target,
    },
    /// Make a learner a voter now.
    Promote {
        /// Its id.
        id: u64,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        target: Target,
    },
    /// Make a voter a learner.
    Demote {
        /// Its id.
        id: u64,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        target: Target,
    },
}

/// Options of every membership change.
#[derive(Args, Debug, Clone, Copy)]
pub struct ChangeFlags {
    /// Apply the change even if it leaves fewer reachable voters than a quorum.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum LeaderAction {
    /// Hand leadership to node ID (default: the most caught-up voter).
    Transfer {
        /// The new leader; omitted, the leader picks the most caught-up voter.
        id: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

/// Parses the command line, runs the command, and returns the process exit status.
pub fn run() -> i32 {
    crate::security::tls::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    match cli.command {
        Command::Serve {
            config,
            id,
            data_dir,
            join,
            bind_all,
        } => serve::run(&config, id, data_dir, join, bind_all),
        Command::Cluster { nodes, config, tls } => cluster::run(&config, nodes, tls),
        Command::Put { key, value, target } => client::run(target, client::Op::Put { key, value }),
        Command::Get {
            key: Some(key),
            consistency,
            prefix: None,
            from: None,
            to: None,
            target,
            ..
        } => client::run(target, client::Op::Get { key, consistency }),
        Command::Get {
            consistency,
            prefix,
            from,
            to,
            limit,
            keys_only,
            target,
            ..
        } => match client::addresses(&target).and_then(|addrs| {
            identity::Identity::from_target(&target).map(|identity| (addrs, identity))
        }) {
            Ok((addrs, identity)) => watch::range(
                addrs,
                watch::RangeArgs {
                    prefix,
                    from,
                    to,
                    limit,
                    keys_only,
                    consistency,
                },
                target.json,
                &identity,
            ),
            Err(message) => {
                eprintln!("{message}");
                EXIT_USAGE
            }
        },
        Command::Watch {
            prefix,
            from,
            target,
        } => match client::addresses(&target).and_then(|addrs| {
            identity::Identity::from_target(&target).map(|identity| (addrs, identity))
        }) {
            Ok((addrs, identity)) => watch::watch(
                addrs,
                watch::WatchArgs { prefix, from },
                target.json,
                &identity,
            ),
            Err(message) => {
                eprintln!("{message}");
                EXIT_USAGE
            }
        },
        Command::Delete { key, target } => client::run(target, client::Op::Delete { key }),
        Command::Cas {
            key,
            expected,
            new,
            expect_absent,
            delete,
            target,
        } => match client::cas_op(key, expected, new, expect_absent, delete) {
            Ok(op) => client::run(target, op),
            Err(message) => {
                eprintln!("raftlog cas: {message}");
                EXIT_USAGE
            }
        },
        Command::Status {
            watch: false,
            target,
            ..
        } => client::run(target, client::Op::Status),
        Command::Status {
            watch: true,
            interval_ms,
            target,
        } => client::run(
            target,
            client::Op::StatusWatch {
                interval: std::time::Duration::from_millis(interval_ms),
            },
        ),
        Command::Log {
            from,
            limit,
            target,
        } => client::run(target, client::Op::Log { from, limit }),
        Command::Members { action } => match action {
            MembersAction::List { target } => client::run(target, client::Op::MembersList),
            MembersAction::Add {
                id,
                raft_addr,
                api_addr,
                learner,
                no_wait,
                change,
                target,
            } => client::run(
                target,
                client::Op::MembersAdd {
                    id,
                    raft_addr,
                    api_addr,
                    voter: !learner,
                    wait: !no_wait,
                    force: change.force,
                },
            ),
            MembersAction::Remove { id, change, target } => client::run(
                target,
                member_change(id, client::MemberAction::Remove, change),
            ),
            MembersAction::Promote { id, change, target } => client::run(
                target,
                member_change(id, client::MemberAction::Promote, change),
            ),
            MembersAction::Demote { id, change, target } => client::run(
                target,
                member_change(id, client::MemberAction::Demote, change),
            ),
        },
        Command::Leader {
            action: LeaderAction::Transfer { id, target },
        } => client::run(target, client::Op::LeaderTransfer { id }),
        Command::Snapshot { target } => client::run(target, client::Op::Snapshot),
        Command::Bench { args, target } => bench::run(target, args),
        Command::Completions { shell } => completions::completions(shell),
        Command::Manpage => completions::manpage(),
        Command::Passwd => identity::passwd(),
        Command::Certs {
            action: CertsAction::Init { nodes, out },
        } => certs::init(nodes, &out),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colors only for a person at a terminal; log files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The client operation for `members remove|promote|demote`.
fn member_change(id: u64, action: client::MemberAction, change: ChangeFlags) -> client::Op {
    client::Op::MembersChange {
        id,
        action,
        force: change.force,
    }
}
