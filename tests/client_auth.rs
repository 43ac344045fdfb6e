//! Rules (issue 16): with an `auth` section, a client request without credentials or with a
//! wrong password is refused `401 unauthenticated`; a user may do what its role allows and
//! is refused `403 forbidden` beyond it, through the leader and through a follower alike
//! (a follower cannot be used to escalate); `raftlog passwd` prints a hash the node
//! accepts; the CLI's `--user` authenticates; a malformed hash is refused at start.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{passwd, raftlog_bin, runtime, Cluster, ClusterSpec};

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

        // The live page offers membership and leadership buttons by the role the viewer
        // proved: `viewer_role` in the cluster status it polls.
        for (user, role) in [(reader, "read"), (writer, "write"), (root, "admin")] {
            let (status, body, _) = call(
                &cluster,
                follower,
                get.clone(),
                "/v1/cluster/status",
                user,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["viewer_role"], role, "{body}");
        }

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

/// A client that trusts the cluster CA in `certs` and presents `client-<role>.pem`.
fn https_client(certs: &std::path::Path, role: Option<&str>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            raftlog::security::tls::ClusterCaVerifier(verifier),
        ));
    let config = match role {
        Some(role) => {
            let chain = CertificateDer::pem_file_iter(certs.join(format!("client-{role}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                PrivateKeyDer::from_pem_file(certs.join(format!("client-{role}-key.pem"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn over_https_a_client_certificate_proves_its_role_through_any_node() {
    runtime().block_on(async {
        let cluster = Cluster::configure_with(
            ClusterSpec::default(),
            json!({
                "tls": {"ca": "certs/ca.pem", "cert": "certs/node-{id}.pem", "key": "certs/node-{id}-key.pem"},
                "auth": auth_section(),
            }),
        );
        let certs = cluster.dir.path().join("certs");
        let status = Command::new(raftlog_bin())
            .args(["certs", "init", "--nodes", "3", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .expect("certs init");
        assert!(status.success());
        for id in 1..=3 {
            cluster.spawn(id);
        }
        let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        let reader = https_client(&certs, Some("read"));
        let writer = https_client(&certs, Some("write"));
        let anonymous = https_client(&certs, None);
        let url = |id: u64, path: &str| format!("https://{}{path}", cluster.api(id));
        for node in [leader, follower] {
            let answer = reader.get(url(node, "/v1/kv/a")).send().await.expect("GET");
            assert!(matches!(answer.status().as_u16(), 200 | 404), "{answer:?}");
            let answer = reader.put(url(node, "/v1/kv/a")).body("x").send().await.expect("PUT");
            assert_eq!(answer.status().as_u16(), 403, "read certificate PUT via node {node}");
            // Through a follower the leader trusts the follower's node certificate to state
            // the role its client proved: write, not more.
            let answer = writer.put(url(node, "/v1/kv/a")).body("x").send().await.expect("PUT");
            assert_eq!(answer.status().as_u16(), 200, "write certificate PUT via node {node}");
            let answer = writer.post(url(node, "/v1/snapshot")).send().await.expect("POST");
            assert_eq!(answer.status().as_u16(), 403, "write certificate snapshot via node {node}");
            let answer = anonymous.get(url(node, "/v1/kv/a")).send().await.expect("GET");
            assert_eq!(answer.status().as_u16(), 401);
            // HTTP Basic works over HTTPS too.
            let answer = anonymous
                .put(url(node, "/v1/kv/b"))
                .basic_auth("writer", Some("write-pw"))
                .body("y")
                .send()
                .await
                .expect("PUT");
            assert_eq!(answer.status().as_u16(), 200);
        }
        // Plain HTTP to the HTTPS port fails at once, and the node keeps serving.
        let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let started = std::time::Instant::now();
        let refused = plain.get(format!("http://{}/v1/kv/a", cluster.api(leader))).send().await;
        assert!(refused.is_err() || refused.as_ref().is_ok_and(|r| !r.status().is_success()), "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        let answer = reader.get(url(leader, "/healthz")).send().await.expect("healthz");
        assert_eq!(answer.status().as_u16(), 200);

        // The CLI: --cacert/--cert/--key.
        let cli = |role: &str| {
            Command::new(raftlog_bin())
                .args(["put", "cli-tls", "v", "--addr", cluster.api(follower), "--cacert"])
                .arg(certs.join("ca.pem"))
                .arg("--cert")
                .arg(certs.join(format!("client-{role}.pem")))
                .arg("--key")
                .arg(certs.join(format!("client-{role}-key.pem")))
                .stdin(Stdio::null())
                .output()
                .expect("run the CLI")
        };
        let out = cli("write");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = cli("read");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&out.stderr));
    });
}
