//! `raftlog get --prefix P`, `raftlog get --from A --to B` and `raftlog watch PREFIX [--from
//! N]` (issue 15).

use std::time::Duration;

use serde_json::Value;

use super::client::{error_message, percent_encode, read_body, runtime, REQUEST_TIMEOUT};
use super::{EXIT_FAILED, EXIT_USAGE};

/// What a range read asks for.
#[derive(Debug, Clone)]
pub struct RangeArgs {
    /// Keys starting with this.
    pub prefix: Option<String>,
    /// First key (inclusive).
    pub from: Option<String>,
    /// Last key (exclusive).
    pub to: Option<String>,
    /// Most pairs to print (all by default).
    pub limit: Option<u64>,
    /// Keys only.
    pub keys_only: bool,
    /// linearizable, lease or stale.
    pub consistency: String,
}

/// A field given as text, or as `NAME_base64` for bytes that are not UTF-8 (shown escaped).
fn text_field(object: &Value, name: &str) -> Option<String> {
    if let Some(text) = object[name].as_str() {
        return Some(text.to_string());
    }
    use base64::Engine as _;
    let encoded = object[format!("{name}_base64")].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(bytes.escape_ascii().to_string())
}

/// Runs a range read against the first node of `addrs` that answers; every page, following
/// `more` with `after=`. Returns the exit status.
pub fn range(
    addrs: Vec<String>,
    args: RangeArgs,
    as_json: bool,
    identity: &super::identity::Identity,
) -> i32 {
    let mut query = match (&args.prefix, &args.from, &args.to) {
        (Some(prefix), None, None) => format!("prefix={}", percent_encode(prefix)),
        (None, from, to) if from.is_some() || to.is_some() => {
            let mut parts = Vec::new();
            if let Some(from) = from {
                parts.push(format!("start={}", percent_encode(from)));
            }
            if let Some(to) = to {
                parts.push(format!("end={}", percent_encode(to)));
            }
            parts.join("&")
        }
        _ => {
            eprintln!("raftlog get: give KEY, or --prefix P, or --from A and/or --to B (not --prefix with --from/--to)");
            return EXIT_USAGE;
        }
    };
    query.push_str(&format!(
        "&consistency={}",
        percent_encode(&args.consistency)
    ));
    if args.keys_only {
        query.push_str("&keys_only=true");
    }
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    runtime.block_on(async move {
        let Some(client) = super::client::http_client(
            crate::security::tls::http_client_builder().timeout(REQUEST_TIMEOUT),
            identity,
        ) else {
            return EXIT_FAILED;
        };
        let mut printed = 0u64;
        let mut after: Option<String> = None;
        let mut node: Option<&String> = None;
        loop {
            let page_query = match &after {
                Some(after) => format!("{query}&after={after}"),
                None => query.clone(),
            };
            let mut answer = None;
            let mut last_error = String::new();
            let candidates: Vec<&String> = match node {
                Some(node) => vec![node],
                None => addrs.iter().collect(),
            };
            for addr in candidates {
                match client
                    .get(format!(
                        "{}://{addr}/v1/kv?{page_query}",
                        super::identity::scheme()
                    ))
                    .send()
                    .await
                {
                    Ok(response) => {
                        answer = Some(response);
                        node = Some(addr);
                        break;
                    }
                    Err(e) => last_error = format!("cannot reach {addr}: {e}"),
                }
            }
            let Some(response) = answer else {
                eprintln!("raftlog: no node answered ({last_error}); is the cluster running?");
                return EXIT_FAILED;
            };
            let status = response.status();
            let Some(body) = read_body(response).await else {
                return EXIT_FAILED;
            };
            if !status.is_success() {
                eprintln!("raftlog: {} ({status})", error_message(&body));
                return EXIT_FAILED;
            }
            let page: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let kvs = page["kvs"].as_array().cloned().unwrap_or_default();
            for kv in &kvs {
                if args.limit.is_some_and(|limit| printed >= limit) {
                    return 0;
                }
                if as_json {
                    println!("{kv}");
                } else {
                    let key = text_field(kv, "key").unwrap_or_default();
                    match text_field(kv, "value") {
                        Some(value) if !args.keys_only => println!("{key}\t{value}"),
                        _ => println!("{key}"),
                    }
                }
                printed += 1;
            }
            let last_key = kvs.last().and_then(|kv| {
                use base64::Engine as _;
                match kv["key"].as_str() {
                    Some(key) => Some(percent_encode(key)),
                    None => kv["key_base64"]
                        .as_str()
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect()),
                }
            });
            match (page["more"].as_bool(), last_key) {
                (Some(true), Some(last_key)) => after = Some(last_key),
                _ => return 0,
            }
        }
    })
}

/// What `raftlog watch` asks for.
#[derive(Debug, Clone)]
pub struct WatchArgs {
    /// Keys starting with this ("" for every key: the change feed).
    pub prefix: String,
    /// The first index wanted (default: the next change).
    pub from: Option<u64>,
}

/// Follows a watch, printing events as they come. When a stream ends (the node stopped,
/// the watcher was too slow, the connection broke) it reconnects, to the next node in
/// turn, from the index after the last one it saw, so nothing is missed or printed twice.
pub fn watch(
    addrs: Vec<String>,
    args: WatchArgs,
    as_json: bool,
    identity: &super::identity::Identity,
) -> i32 {
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    runtime.block_on(async move {
        // No overall timeout: a watch stream stays open for as long as it is read.
        let Some(client) = super::client::http_client(
            crate::security::tls::http_client_builder().connect_timeout(Duration::from_secs(5)),
            identity,
        ) else {
            return EXIT_FAILED;
        };
        let mut next_index = args.from;
        let mut attempt = 0usize;
        let mut failures_in_row = 0usize;
        loop {
            let addr = &addrs[attempt % addrs.len()];
            attempt += 1;
            let mut url = format!(
                "{}://{addr}/v1/watch?prefix={}",
                super::identity::scheme(),
                percent_encode(&args.prefix)
            );
            if let Some(from) = next_index {
                url.push_str(&format!("&from_index={from}"));
            }
            let mut response = match client.get(&url).send().await {
                Ok(response) => response,
                Err(e) => {
                    failures_in_row += 1;
                    if failures_in_row >= 3 * addrs.len() {
                        eprintln!("raftlog: cannot reach any node to watch ({addr}: {e}); is the cluster running?");
                        return EXIT_FAILED;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                eprintln!("raftlog: {} ({status})", error_message(&body));
                return EXIT_FAILED;
            }
            failures_in_row = 0;
            let mut pending = Vec::new();
            'stream: loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) | Err(_) => break 'stream,
                };
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if as_json {
                        println!("{event}");
                    }
                    if let Some(index) = event["index"].as_u64() {
                        next_index = Some(index + 1);
                        if !as_json {
                            let key = text_field(&event, "key").unwrap_or_default();
                            match event["op"].as_str() {
                                Some("put") => println!(
                                    "{index} put {key} {}",
                                    text_field(&event, "value").unwrap_or_default()
                                ),
                                _ => println!("{index} delete {key}"),
                            }
                        }
                    } else if let Some(progress) = event["progress"].as_u64() {
                        next_index = Some(progress + 1);
                    } else if let Some(error) = event.get("error") {
                        if let Some(resume) = error["resume_index"].as_u64() {
                            next_index = Some(resume);
                            eprintln!(
                                "raftlog: {}; resuming from index {resume}",
                                error["code"].as_str().unwrap_or("stream ended")
                            );
                        } else {
                            eprintln!("raftlog: {}", error_message(&line));
                            return EXIT_FAILED;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
