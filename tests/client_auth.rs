//! Rules (issue 16): with an `auth` section, a client request without credentials or with a
//! wrong password is refused `401 unauthenticated`; a user may do what its role allows and
//! is refused `403 forbidden` beyond it, through the leader and through a follower alike
//! (a follower cannot be used to escalate); `raftlog passwd` prints a hash the node
//! accepts; the CLI's `--user` authenticates; a malformed hash is refused at start.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{raftlog_bin, runtime, Cluster, ClusterSpec};

/// `raftlog passwd` with `password` on stdin; its stdout, trimmed.
fn passwd(password: &str) -> String {
    let mut child = Command::new(raftlog_bin())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raftlog passwd");
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

fn auth_section() -> Value {
    json!({"users": {
        "reader": {"password_hash": passwd("read-pw"), "role": "read"},
        "writer": {"password_hash": passwd("write-pw"), "role": "write"},
        "root": {"password_hash": passwd("admin-pw"), "role": "admin"},
    }})
}

/// Sends `method path` to node `id` as `user` (None: no credentials); status and body.
async fn call(
    cluster: &Cluster,
    id: u64,
    method: reqwest::Method,
    path: &str,
    user: Option<(&str, &str)>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let url = format!("http://{}{path}", cluster.api(id));
    let mut request = cluster.client.request(method, url);
    if let Some((user, password)) = user {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, challenge)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn users_are_authenticated_and_held_to_their_roles_through_any_node() {
    runtime().block_on(async {
        let cluster =
            Cluster::start_with_config(ClusterSpec::default(), json!({"auth": auth_section()}));
        let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        let put = reqwest::Method::PUT;
        let get = reqwest::Method::GET;
        let post = reqwest::Method::POST;
        let reader = Some(("reader", "read-pw"));
        let writer = Some(("writer", "write-pw"));
        let root = Some(("root", "admin-pw"));
        let new_member = json!({"id": 9, "raft_addr": "127.0.0.1:1", "api_addr": "127.0.0.1:2"});

        // Open: health, readiness and status (the node bootstrap reads peers' status).
        assert_eq!(
            call(&cluster, leader, get.clone(), "/healthz", None, None)
                .await
                .0,
            200
        );
        assert_eq!(
            call(&cluster, leader, get.clone(), "/v1/status", None, None)
                .await
                .0,
            200
        );

        for node in [leader, follower] {
            // No credentials, wrong password, unknown user: 401 with the challenge.
            let (status, body, challenge) =
                call(&cluster, node, get.clone(), "/v1/kv/a", None, None).await;
            assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
            assert_eq!(challenge.as_deref(), Some("Basic realm=\"raftlog\""));
            let (status, body, _) = call(
                &cluster,
                node,
                put.clone(),
                "/v1/kv/a",
                Some(("writer", "nope")),
                None,
            )
            .await;
            assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
            let (status, _, _) = call(
                &cluster,
                node,
                get.clone(),
                "/v1/kv/a",
                Some(("ghost", "x")),
                None,
            )
            .await;
            assert_eq!(status, 401);
            let (status, _, _) = call(&cluster, node, get.clone(), "/metrics", None, None).await;
            assert_eq!(status, 401, "metrics need read");

            // Read: GET yes (404: never written), PUT and members add no.
            let (status, body, _) = call(
                &cluster,
                node,
                get.clone(),
                "/v1/kv/a?consistency=linearizable",
                reader,
                None,
            )
            .await;
            assert!(status == 404 || status == 200, "{status} {body}");
            let (status, body, _) =
                call(&cluster, node, put.clone(), "/v1/kv/a", reader, None).await;
            assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("write") && message.contains("read"),
                "{message}"
            );
            let (status, body, _) = call(
                &cluster,
                node,
                post.clone(),
                "/v1/members",
                reader,
                Some(new_member.clone()),
            )
            .await;
            assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

            // Write: PUT yes (through the follower too: the leader authenticates the
            // relayed credentials), members no.
            let (status, body, _) =
                call(&cluster, node, put.clone(), "/v1/kv/a", writer, None).await;
            assert_eq!(status, 200, "PUT as writer via node {node}: {body}");
            let (status, body, _) = call(
                &cluster,
                node,
                post.clone(),
                "/v1/members",
                writer,
                Some(new_member.clone()),
            )
            .await;
            assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
            let (status, body, _) =
                call(&cluster, node, post.clone(), "/v1/snapshot", writer, None).await;
            assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

            // Admin: everything, e.g. a snapshot.
            let (status, body, _) =
                call(&cluster, node, post.clone(), "/v1/snapshot", root, None).await;
            assert_eq!(status, 200, "snapshot as admin via node {node}: {body}");
        }
        let (status, body, _) =
            call(&cluster, follower, get.clone(), "/v1/kv/a", reader, None).await;
        assert_eq!(status, 200, "{body}");

        // The CLI: `--user` with the password from RAFTLOG_PASSWORD.
        let cli = |args: &[&str], password: Option<&str>| {
            let mut command = Command::new(raftlog_bin());
            command.args(args).args(["--addr", cluster.api(follower)]);
            if let Some(password) = password {
                command.env("RAFTLOG_PASSWORD", password);
            }
            command.stdin(Stdio::null()).output().expect("run the CLI")
        };
        let out = cli(
            &["put", "cli-key", "v1", "--user", "writer"],
            Some("write-pw"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cli(&["get", "cli-key", "--user", "reader"], Some("read-pw"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("v1"));
        let out = cli(
            &["put", "cli-key", "v2", "--user", "reader"],
            Some("read-pw"),
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forbidden"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cli(&["get", "cli-key"], None);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unauthenticated"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn a_password_hash_that_is_not_argon2id_is_refused_at_start() {
    let cluster = Cluster::configure_with(
        ClusterSpec {
            nodes: 1,
            ..ClusterSpec::default()
        },
        json!({"auth": {"users": {"ann": {"password_hash": "plaintext", "role": "read"}}}}),
    );
    cluster.spawn(1);
    let status = cluster
        .wait_exit(1, Duration::from_secs(10))
        .expect("exits");
    assert_eq!(status.code(), Some(2));
    let log = cluster.log_text(1);
    assert!(log.contains("auth.users.\"ann\".password_hash"), "{log}");
    assert!(log.contains("raftlog passwd"), "{log}");
}
