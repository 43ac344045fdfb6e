//! `raftlog serve --join ADDR[,ADDR...]`: a node that is not yet a member asks the cluster
//! to add it.
//!
//! 1. Before starting, a node with no data learns the live membership from a member
//!    (`GET /v1/members`), so that its transport knows the leader that will contact it. It
//!    starts with that view, in which it is not a voter: it can never campaign and becomes
//!    one only through the log.
//! 2. It starts its listeners, then asks to be added (`POST /v1/members` with its own
//!    addresses, `voter: true`), so the addresses the cluster records are ones it already
//!    listens on.
//! 3. Both steps retry with backoff until a member answers (Consul's `retry_join`). The add
//!    is idempotent: a node that is already a member is left as it is, and a node restarted
//!    with `--join` after it joined just rejoins from its data directory (rqlite's rule).

use std::sync::Arc;

use crate::security::tls::NodeTls;
use std::time::Duration;

use serde_json::{json, Value};
use storage::{Membership, NodeId};

/// Backoff between attempts: doubling from the first to the last.
const RETRY_DELAY_FIRST: Duration = Duration::from_millis(200);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// Parses `--join`: comma-separated API addresses.
pub fn parse_addrs(raw: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(
            "--join needs at least one member's API address, e.g. --join 127.0.0.1:8001".into(),
        );
    }
    for addr in &addrs {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "--join: {addr:?} is not an IP:port API address of a member, e.g. 127.0.0.1:8001"
            ));
        }
    }
    Ok(addrs)
}

/// The client a joining node asks members with: over HTTPS with its node certificate when
/// the cluster has `tls` (a node certificate is admin's, so the members accept the join).
fn client(tls: Option<&NodeTls>) -> reqwest::Client {
    crate::security::tls::api_client_builder(crate::security::tls::http_client_builder(), tls)
        .timeout(Duration::from_secs(40))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(RETRY_DELAY_MAX)
}

/// The cluster's live membership as a member reports it, without `id`; retries until some
/// address in `addrs` answers.
pub async fn fetch_membership(
    addrs: &[String],
    id: NodeId,
    tls: Option<Arc<NodeTls>>,
) -> Result<Membership, String> {
    let client = client(tls.as_deref());
    let scheme = crate::security::tls::api_scheme(tls.as_deref());
    let mut delay = RETRY_DELAY_FIRST;
    loop {
        for addr in addrs {
            match get_members(&client, scheme, addr).await {
                Ok(mut membership) => {
                    if membership.members.get(&id).is_some_and(|m| m.voter) {
                        // A node with no data that the cluster still counts as a voter lost
                        // its disk: its vote, cast with an empty log, would be counted and
                        // could elect a leader without acknowledged writes (issue 11, item 1).
                        return Err(wiped_voter_remedy(id, addr));
                    }
                    // Never start as a voter of a cluster whose log this node lacks.
                    membership.members.remove(&id);
                    tracing::info!(%addr, members = membership.members.len(), "learned the cluster's membership");
                    return Ok(membership);
                }
                Err(e) => tracing::warn!(%addr, "cannot learn the membership yet: {e}; retrying"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = next_delay(delay);
    }
}

/// What an operator does when a voter's data directory is gone.
fn wiped_voter_remedy(id: NodeId, addr: &str) -> String {
    format!(
        "node {id} has no data but the cluster (asked at {addr}) still counts it as a voter: its \
         disk was lost or replaced. Remove it first (`raftlog members remove {id} --addr {addr}`), \
         then start it again with --join to re-add it as a new learner"
    )
}

async fn get_members(
    client: &reqwest::Client,
    scheme: &str,
    addr: &str,
) -> Result<Membership, String> {
    let response = client
        .get(format!("{scheme}://{addr}/v1/members"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    parse_members(&body)
}

/// Reads `{"members": [{"id", "raft_addr", "api_addr", "voter"}]}`.
pub fn parse_members(body: &Value) -> Result<Membership, String> {
    let mut membership = Membership::default();
    for m in body["members"]
        .as_array()
        .ok_or("no members list in the answer")?
    {
        let (Some(id), Some(raft_addr), Some(api_addr), Some(voter)) = (
            m["id"].as_u64(),
            m["raft_addr"].as_str(),
            m["api_addr"].as_str(),
            m["voter"].as_bool(),
        ) else {
            return Err(format!("malformed member in the answer: {m}"));
        };
        membership.members.insert(
            id,
            storage::Member {
                raft_addr: raft_addr.to_string(),
                api_addr: api_addr.to_string(),
                voter,
            },
        );
    }
    if membership.voters().next().is_none() {
        return Err("the answer lists no voters".into());
    }
    Ok(membership)
}

/// How one attempt to be added ended.
enum Attempt {
    Added,
    Retry(String),
    /// The cluster will never accept this request as it is; the message says why.
    Refused(String),
}

/// Asks the members at `addrs` to add this node (as a voter, learner first) until one
/// accepts. Returns an error the operator must act on when the cluster refuses for good.
pub async fn request_membership(
    addrs: &[String],
    id: NodeId,
    raft_addr: &str,
    api_addr: &str,
    tls: Option<Arc<NodeTls>>,
) -> Result<(), String> {
    let client = client(tls.as_deref());
    let scheme = crate::security::tls::api_scheme(tls.as_deref());
    let body = json!({"id": id, "raft_addr": raft_addr, "api_addr": api_addr, "voter": true});
    let mut delay = RETRY_DELAY_FIRST;
    loop {
        for addr in addrs {
            match ask(&client, scheme, addr, &body).await {
                Attempt::Added => {
                    tracing::info!(%addr, "joined the cluster as a voter");
                    return Ok(());
                }
                Attempt::Retry(why) => tracing::warn!(%addr, "join not done yet: {why}; retrying"),
                Attempt::Refused(why) => {
                    return Err(format!(
                        "the cluster at {addr} refused to add node {id}: {why}"
                    ))
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = next_delay(delay);
    }
}

async fn ask(client: &reqwest::Client, scheme: &str, addr: &str, body: &Value) -> Attempt {
    let response = match client
        .post(format!("{scheme}://{addr}/v1/members"))
        .json(body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let code = answer["error"]["code"].as_str().unwrap_or("").to_string();
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    match (status, code.as_str()) {
        (200, _) => Attempt::Added,
        // A bad address or a duplicate id/address does not fix itself.
        (400, _) => Attempt::Refused(message),
        (409, "conflict") if !message.contains("has not committed yet") => Attempt::Refused(
            format!("{message} (fix `nodes` in the config file, or remove the old member first)"),
        ),
        _ => Attempt::Retry(format!("{status} {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_addresses_are_checked() {
        assert_eq!(
            parse_addrs("127.0.0.1:8001, 127.0.0.1:8002").unwrap(),
            vec!["127.0.0.1:8001", "127.0.0.1:8002"]
        );
        assert!(parse_addrs("").is_err());
        assert!(parse_addrs("localhost").unwrap_err().contains("localhost"));
    }

    #[test]
    fn members_answer_parses_and_needs_a_voter() {
        let body = json!({"members": [
            {"id": 1, "raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001", "voter": true},
            {"id": 4, "raft_addr": "127.0.0.1:7004", "api_addr": "127.0.0.1:8004", "voter": false},
        ]});
        let m = parse_members(&body).unwrap();
        assert_eq!(m.voters().collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.learners().collect::<Vec<_>>(), vec![4]);
        assert!(parse_members(&json!({"members": []})).is_err());
        assert!(parse_members(&json!({"members": [{"id": 1}]})).is_err());
        assert!(parse_members(&json!({})).is_err());
    }
}
