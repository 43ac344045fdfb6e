//! Client commands: one HTTP request to a node (or to each node, for `status`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Target, EXIT_FAILED, EXIT_USAGE};
use crate::config::ClusterConfig;

/// What the user asked for.
#[derive(Debug)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
        consistency: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        value: Option<String>,
    },
    Status,
    /// `status --watch`: redraw the table every `interval` until interrupted.
    StatusWatch {
        interval: Duration,
    },
    Log {
        from: Option<u64>,
        limit: u64,
    },
    MembersList,
    MembersAdd {
        id: u64,
        raft_addr: String,
        api_addr: String,
        voter: bool,
        wait: bool,
        force: bool,
    },
    MembersChange {
        id: u64,
        action: MemberAction,
        force: bool,
    },
    LeaderTransfer {
        id: Option<u64>,
    },
    Snapshot,
}

/// A change to an existing member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAction {
    Remove,
    Promote,
    Demote,
}

/// How long a membership change may take: the leader waits up to 30 s for a learner to
/// catch up and be promoted.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(40);

/// `?force=true&wait=false` as asked.
fn change_query(force: bool, wait: bool) -> String {
    let mut params = Vec::new();
    if force {
        params.push("force=true");
    }
    if !wait {
        params.push("wait=false");
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// Builds a CAS from the positional arguments and flags.
pub fn cas_op(
    key: String,
    expected: Option<String>,
    new: Option<String>,
    expect_absent: bool,
    delete: bool,
) -> Result<Op, String> {
    // Positionals fill EXPECTED first, so with --expect-absent a single value is the new one.
    let (expected, new) = match (expect_absent, expected, new) {
        (true, Some(value), None) => (None, Some(value)),
        (true, None, None) => (None, None),
        (true, Some(_), Some(_)) => return Err("--expect-absent takes no EXPECTED value".into()),
        (false, None, _) => return Err("give EXPECTED (or --expect-absent)".into()),
        (false, expected, new) => (expected, new),
        (true, None, Some(_)) => return Err("unreachable argument order".into()),
    };
    match (delete, &new) {
        (true, Some(_)) => Err("--delete takes no NEW value".into()),
        (false, None) => Err("give NEW (or --delete)".into()),
        _ => Ok(Op::Cas {
            key,
            expected,
            value: new,
        }),
    }
}

/// Runs `op` and returns the exit status.
pub fn run(target: Target, op: Op) -> i32 {
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    let addrs = match addresses(&target) {
        Ok(addrs) => addrs,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
    };
    let identity = match super::identity::Identity::from_target(&target) {
        Ok(identity) => identity,
        Err(message) => {
            eprintln!("raftlog: {message}");
            return EXIT_USAGE;
        }
    };
    runtime.block_on(async move {
        let Some(client) = http_client(
            crate::security::tls::http_client_builder().timeout(REQUEST_TIMEOUT),
            &identity,
        ) else {
            return EXIT_FAILED;
        };
        match op {
            Op::Status => status(&client, &addrs, target.json).await,
            Op::StatusWatch { interval } => {
                status_watch(&client, &addrs, target.json, interval).await
            }
            op => single(&client, &addrs, op, target.json).await,
        }
    })
}

/// `--addr` alone, or every node of `--config` (default ./config.json).
pub(super) fn addresses(target: &Target) -> Result<Vec<String>, String> {
    if let Some(addr) = &target.addr {
        return Ok(vec![addr.clone()]);
    }
    let path = target
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.json"));
    let config = ClusterConfig::load(Path::new(&path)).map_err(|e| {
        format!("{e}\n(give --addr HOST:PORT of a node, or --config FILE with the cluster's nodes)")
    })?;
    Ok(config
        .nodes()
        .values()
        .map(|n| n.api_addr.to_string())
        .collect())
}

/// The runtime a client command runs its requests on; `None` (said on stderr) when it
/// cannot start.
pub(super) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("raftlog: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `text` percent-encoded for a URL path segment or query value (RFC 3986: everything but
/// the unreserved characters).
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn request(client: &reqwest::Client, addr: &str, op: &Op) -> reqwest::RequestBuilder {
    let scheme = super::identity::scheme();
    let url = |path: &str| format!("{scheme}://{addr}{path}");
    match op {
        Op::Put { key, value } => client
            .put(url(&format!("/v1/kv/{}", percent_encode(key))))
            .body(value.clone()),
        Op::Get { key, consistency } => client.get(url(&format!(
            "/v1/kv/{}?consistency={}",
            percent_encode(key),
            percent_encode(consistency)
        ))),
        Op::Delete { key } => client.delete(url(&format!("/v1/kv/{}", percent_encode(key)))),
        Op::Cas {
            key,
            expected,
            value,
        } => client
            .post(url("/v1/cas"))
            .json(&json!({"key": key, "expected": expected, "value": value})),
        Op::Status | Op::StatusWatch { .. } => client.get(url("/v1/status")),
        Op::Log { from, limit } => {
            let from = from.map(|f| format!("&from={f}")).unwrap_or_default();
            client.get(url(&format!("/v1/log?limit={limit}{from}")))
        }
        Op::MembersList => client.get(url("/v1/members")),
        Op::MembersAdd {
            id,
            raft_addr,
            api_addr,
            voter,
            wait,
            force,
        } => client
            .post(url(&format!("/v1/members{}", change_query(*force, *wait))))
            .timeout(MEMBERSHIP_TIMEOUT)
            .json(&json!({"id": id, "raft_addr": raft_addr, "api_addr": api_addr, "voter": voter})),
        Op::MembersChange { id, action, force } => {
            let query = change_query(*force, true);
            let request = match action {
                MemberAction::Remove => client.delete(url(&format!("/v1/members/{id}{query}"))),
                MemberAction::Promote => {
                    client.post(url(&format!("/v1/members/{id}/promote{query}")))
                }
                MemberAction::Demote => {
                    client.post(url(&format!("/v1/members/{id}/demote{query}")))
                }
            };
            request.timeout(MEMBERSHIP_TIMEOUT)
        }
        Op::LeaderTransfer { id: Some(id) } => client
            .post(url("/v1/leader/transfer"))
            .json(&json!({"to": id})),
        Op::LeaderTransfer { id: None } => client.post(url("/v1/leader/transfer")),
        Op::Snapshot => client.post(url("/v1/snapshot")),
    }
}

/// Sends `op` to the first node that answers (a node that answers with an error is an
/// answer: writes are not retried elsewhere, which could apply them twice).
async fn single(client: &reqwest::Client, addrs: &[String], op: Op, as_json: bool) -> i32 {
    let mut last_error = String::new();
    for addr in addrs {
        let sent = request(client, addr, &op).send();
        let answer = match op {
            Op::Snapshot => super::snapshot_progress::while_writing(client, addr, sent).await,
            _ => sent.await,
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                last_error = format!("cannot connect to {addr}: {e}");
                continue;
            }
            Err(e) => {
                eprintln!("raftlog: request to {addr} failed: {e}");
                return EXIT_FAILED;
            }
        };
        return print_answer(&op, response, as_json).await;
    }
    eprintln!("raftlog: no node answered ({last_error}); is the cluster running?");
    EXIT_FAILED
}

/// The whole body of an answer; `None` (said on stderr) when it was cut off.
pub(super) async fn read_body(response: reqwest::Response) -> Option<bytes::Bytes> {
    match response.bytes().await {
        Ok(body) => Some(body),
        Err(e) => {
            eprintln!("raftlog: the answer was cut off: {e}");
            None
        }
    }
}

/// An error answer's `code: message`, or its text when it is not API.md's JSON error.
pub(super) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{}: {}",
                v["error"]["code"].as_str()?,
                v["error"]["message"].as_str()?
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

async fn print_answer(op: &Op, response: reqwest::Response, as_json: bool) -> i32 {
    let status = response.status();
    let index = response
        .headers()
        .get("x-raft-index")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(body) = read_body(response).await else {
        return EXIT_FAILED;
    };
    if !status.is_success() {
        let message = error_message(&body);
        if as_json {
            println!("{}", String::from_utf8_lossy(&body));
        }
        eprintln!("raftlog: {} ({status})", message);
        return EXIT_FAILED;
    }
    if let Op::Get { .. } = op {
        if as_json {
            println!(
                "{}",
                json!({"value": String::from_utf8_lossy(&body), "index": index.and_then(|i| i.parse::<u64>().ok())})
            );
        } else {
            println!("{}", String::from_utf8_lossy(&body));
        }
        return 0;
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if as_json {
        println!("{value}");
        return 0;
    }
    print_human(op, &value);
    0
}

fn print_human(op: &Op, value: &Value) {
    match op {
        Op::Put { .. } => println!("OK (index {})", value["index"]),
        Op::Delete { .. } => {
            let deleted = value["deleted"].as_bool().unwrap_or(false);
            println!(
                "{} (index {})",
                if deleted { "deleted" } else { "not found" },
                value["index"]
            );
        }
        Op::Cas { .. } => {
            // A value that is not UTF-8 comes as current_base64 (never converted lossily).
            let current = match (value["current"].as_str(), value["current_base64"].as_str()) {
                (Some(text), _) => format!("{text:?}"),
                (None, Some(encoded)) => format!("base64:{encoded}"),
                (None, None) => "(absent)".into(),
            };
            if value["succeeded"].as_bool().unwrap_or(false) {
                println!("swapped: now {current} (index {})", value["index"]);
            } else {
                println!("not swapped: the value is {current}");
            }
        }
        Op::Log { .. } => {
            for entry in value.as_array().into_iter().flatten() {
                println!(
                    "{:>8} term {:<4} {:<10} {}",
                    cell(&entry["index"]),
                    cell(&entry["term"]),
                    cell(&entry["kind"]),
                    entry["data"]
                );
            }
        }
        Op::MembersList | Op::MembersAdd { .. } | Op::MembersChange { .. } => {
            let members = value["members"].as_array().cloned().unwrap_or_default();
            println!("{:<6} {:<22} {:<22} role", "id", "raft_addr", "api_addr");
            for m in members {
                let role = if m["voter"].as_bool().unwrap_or(false) {
                    "voter"
                } else {
                    "learner"
                };
                println!(
                    "{:<6} {:<22} {:<22} {role}",
                    cell(&m["id"]),
                    cell(&m["raft_addr"]),
                    cell(&m["api_addr"]),
                );
            }
        }
        Op::Snapshot => println!("snapshot at index {}", value["snapshot_index"]),
        Op::LeaderTransfer { .. } => println!(
            "node {} leads now ({} ms)",
            cell(&value["leader_id"]),
            cell(&value["elapsed_ms"])
        ),
        _ => println!("{value}"),
    }
}

/// A JSON value as a table cell (`Value`'s Display ignores width and quotes strings).
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// `status --watch`: the table redrawn in place (cursor home, clear to the end) at a
/// terminal, so it reads like `watch raftlog status`; piped, one table after another with a
/// timestamp line, so a log of it stays readable. Runs until Ctrl-C (exit 0); a round in
/// which no node answered is shown, not fatal, since a whole-cluster restart is exactly
/// what one watches.
async fn status_watch(
    client: &reqwest::Client,
    addrs: &[String],
    as_json: bool,
    interval: Duration,
) -> i32 {
    use std::io::{IsTerminal, Write};
    let at_terminal = std::io::stdout().is_terminal();
    // One listener for the whole watch, polled during rounds as well as between them:
    // tokio delivers a signal only to listeners that exist when it arrives, so one made
    // afresh for each sleep missed a Ctrl-C that came while a round waited for a node.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if at_terminal && !as_json {
            print!("\x1b[H\x1b[J");
        }
        if !as_json {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            println!(
                "raftlog status, every {} ms (unix time {now}; Ctrl-C stops)",
                interval.as_millis()
            );
        }
        tokio::select! {
            _ = status(client, addrs, as_json) => {}
            _ = &mut interrupted => return 0,
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => return 0,
        }
    }
}

/// `status`: ask every node and print one row each.
async fn status(client: &reqwest::Client, addrs: &[String], as_json: bool) -> i32 {
    let mut rows = Vec::new();
    let mut reachable = 0;
    for addr in addrs {
        let scheme = super::identity::scheme();
        let answer = match client
            .get(format!("{scheme}://{addr}/v1/status"))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
            _ => None,
        };
        if answer.is_some() {
            reachable += 1;
        }
        rows.push((addr.clone(), answer));
    }
    if as_json {
        let all: Vec<Value> = rows
            .iter()
            .map(|(addr, s)| {
                s.clone()
                    .unwrap_or_else(|| json!({"api_addr": addr, "error": "unreachable"}))
            })
            .collect();
        println!("{}", Value::Array(all));
    } else {
        println!(
            "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10} {:>8} {:>8}",
            "id", "api_addr", "role", "term", "commit", "applied", "snapshot", "leader"
        );
        for (addr, s) in &rows {
            match s {
                Some(s) => println!(
                    "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10} {:>8} {:>8}",
                    cell(&s["id"]),
                    addr,
                    cell(&s["role"]),
                    cell(&s["term"]),
                    cell(&s["commit_index"]),
                    cell(&s["applied_index"]),
                    cell(&s["snapshot_index"]),
                    cell(&s["leader_id"])
                ),
                None => println!("{:<4} {:<22} unreachable", "?", addr),
            }
        }
    }
    if reachable == 0 {
        eprintln!("raftlog: no node answered; is the cluster running?");
        return EXIT_FAILED;
    }
    0
}

/// How long a client command waits for one answer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the commands' HTTP client, or says on stderr why it cannot.
pub(super) fn http_client(
    builder: reqwest::ClientBuilder,
    identity: &super::identity::Identity,
) -> Option<reqwest::Client> {
    identity
        .apply(builder)
        .build()
        .map_err(|e| eprintln!("raftlog: cannot build an HTTP client: {e}"))
        .ok()
}
