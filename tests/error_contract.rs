//! API.md's error contract on a real node: every error, including a malformed query string,
//! an unsupported method and an unknown path, is the JSON object
//! `{"error": {"code", "message"}}`; a stale `Request-Id` has its own code (not 409, which is
//! for membership, and not 500); CAS works on values that are not UTF-8.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use support::{runtime, Cluster, ClusterSpec};

/// Sends `request` and returns its status and JSON body, asserting the body is the JSON
/// error object with a non-empty code and message.
async fn json_error(request: reqwest::RequestBuilder) -> (u16, String, String) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.expect("body");
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("status {status}: the error body is not JSON ({e}): {body:?}"));
    let code = json["error"]["code"].as_str().unwrap_or("").to_string();
    let message = json["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        content_type.starts_with("application/json"),
        "status {status}: content-type {content_type:?}"
    );
    assert!(
        !code.is_empty() && !message.is_empty(),
        "status {status}: {body}"
    );
    (status, code, message)
}

fn one_node() -> Cluster {
    Cluster::start(ClusterSpec {
        nodes: 1,
        ..ClusterSpec::default()
    })
}

#[test]
fn every_error_answer_is_the_json_error_object() {
    runtime().block_on(async {
        let cluster = one_node();
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        let base = format!("http://{}", cluster.api(1));
        let client = &cluster.client;

        let (status, code, message) = json_error(client.get(format!("{base}/v1/log?from=x"))).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
        assert!(message.contains("/v1/log"), "names the request: {message}");

        let (status, code, message) =
            json_error(client.get(format!("{base}/v1/log?limit=-1"))).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");

        let (status, code, message) =
            json_error(client.patch(format!("{base}/v1/kv/k")).body("v")).await;
        assert_eq!(
            (status, code.as_str()),
            (405, "method_not_allowed"),
            "{message}"
        );
        assert!(message.contains("PATCH"), "names what failed: {message}");

        let (status, code, _) = json_error(client.get(format!("{base}/v1/cas"))).await;
        assert_eq!((status, code.as_str()), (405, "method_not_allowed"));

        let (status, code, _) = json_error(client.get(format!("{base}/no/such/path"))).await;
        assert_eq!((status, code.as_str()), (404, "not_found"));

        // GET, PUT and DELETE of a key are answered before the router (issue 14); their errors
        // are the same objects, and what is not a key still goes to the router.
        let (status, code, message) =
            json_error(client.get(format!("{base}/v1/kv/k?consistency=bogus"))).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
        assert!(message.contains("bogus"), "names what failed: {message}");
        let (status, code, _) = json_error(client.put(format!("{base}/v1/kv/%zz")).body("v")).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
        let (status, code, _) = json_error(client.put(format!("{base}/v1/kv/")).body("v")).await;
        assert_eq!((status, code.as_str()), (404, "not_found"));
        let (status, code, _) = json_error(client.delete(format!("{base}/v1/kv/%zz"))).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));

        let (status, code, _) = json_error(
            client
                .put(format!("{base}/v1/kv/big"))
                .body(vec![b'x'; (1 << 20) + 1]),
        )
        .await;
        assert_eq!((status, code.as_str()), (413, "too_large"));

        let (status, code, _) = json_error(
            client
                .post(format!("{base}/v1/cas"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    });
}

#[test]
fn stale_request_id_gets_its_own_code() {
    runtime().block_on(async {
        let cluster = one_node();
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster
            .put_with_id(1, "k", "new", "client-a:5")
            .await
            .expect("first write");
        let retry = cluster.put_with_id(1, "k", "new", "client-a:5").await;
        assert!(
            retry.is_ok(),
            "a retry answers the first outcome: {retry:?}"
        );
        let url = format!("http://{}/v1/kv/k", cluster.api(1));
        let (status, code, message) = json_error(
            cluster
                .client
                .put(url)
                .header("Request-Id", "client-a:3")
                .body("old"),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (422, "stale_request_id"),
            "{message}"
        );
        assert_eq!(
            cluster.get(1, "k", "linearizable").await,
            Ok(Some("new".to_string())),
            "the stale request was not applied"
        );
    });
}

/// A `Request-Id` reused for a different command is refused, not answered with the other
/// command's outcome: the session keeps a fingerprint of the command it answered for.
#[test]
fn reused_request_id_with_another_command_is_refused_not_answered() {
    runtime().block_on(async {
        let cluster = one_node();
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster
            .put_with_id(1, "k", "first", "client-b:1")
            .await
            .expect("first write");
        let url = format!("http://{}/v1/kv/other", cluster.api(1));
        let (status, code, message) = json_error(
            cluster
                .client
                .put(url)
                .header("Request-Id", "client-b:1")
                .body("second"),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (422, "request_id_reused"),
            "{message}"
        );
        assert!(message.contains("client-b:1"), "names the id: {message}");
        assert_eq!(
            cluster.get(1, "other", "linearizable").await,
            Ok(None),
            "the second command was not applied"
        );
        // The true retry still answers the first outcome.
        let retry = cluster.put_with_id(1, "k", "first", "client-b:1").await;
        assert!(
            retry.is_ok(),
            "a retry answers the first outcome: {retry:?}"
        );
    });
}

#[test]
fn cas_round_trips_values_that_are_not_utf8() {
    runtime().block_on(async {
        let cluster = one_node();
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let first: &[u8] = &[0xff, 0xfe, 0x00, 0x80];
        let second: &[u8] = &[0xc3, 0x28, 0x01];
        let base = format!("http://{}", cluster.api(1));
        let put = cluster
            .client
            .put(format!("{base}/v1/kv/bin"))
            .body(first.to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(put.status().as_u16(), 200);

        let cas = |body: Value| {
            let request = cluster.client.post(format!("{base}/v1/cas")).json(&body);
            async move {
                let response = request.send().await.expect("cas");
                let status = response.status().as_u16();
                let json: Value = response.json().await.expect("cas answer is JSON");
                (status, json)
            }
        };
        // A mismatch reports the binary current value exactly, as base64.
        let (status, answer) = cas(serde_json::json!({
            "key": "bin", "expected_base64": b64(second), "value": "x"
        }))
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["succeeded"], false);
        assert_eq!(answer["current_base64"], b64(first), "{answer}");
        assert!(answer.get("current").is_none(), "no lossy text: {answer}");

        let (status, answer) = cas(serde_json::json!({
            "key": "bin", "expected_base64": b64(first), "value_base64": b64(second)
        }))
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["succeeded"], true, "{answer}");
        assert_eq!(answer["current_base64"], b64(second), "{answer}");
        let got = cluster
            .client
            .get(format!("{base}/v1/kv/bin"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(&got[..], second);

        // A UTF-8 value still comes as text.
        let (_, answer) = cas(serde_json::json!({
            "key": "bin", "expected_base64": b64(second), "value": "text"
        }))
        .await;
        assert_eq!(answer["current"], "text", "{answer}");

        let (status, code, _) = json_error(cluster.client.post(format!("{base}/v1/cas")).json(
            &serde_json::json!({"key": "bin", "expected": "a", "expected_base64": b64(b"a")}),
        ))
        .await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
        let (status, code, _) = json_error(
            cluster
                .client
                .post(format!("{base}/v1/cas"))
                .json(&serde_json::json!({"key": "bin", "expected_base64": "%%%"})),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    });
}

/// API.md: a value that is not UTF-8 is given as `*_base64`, never altered; the log page
/// (`GET /v1/log`) follows the same rule as the CAS answer.
#[test]
fn log_page_shows_values_that_are_not_utf8_as_base64() {
    runtime().block_on(async {
        let cluster = one_node();
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        let value: &[u8] = &[0xff, 0xfe, 0x00, 0x80];
        let base = format!("http://{}", cluster.api(1));
        let put = cluster
            .client
            .put(format!("{base}/v1/kv/binary-in-log"))
            .body(value.to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(put.status().as_u16(), 200);
        let page: Value = cluster
            .client
            .get(format!("{base}/v1/log?from=1&limit=1000"))
            .send()
            .await
            .expect("log")
            .json()
            .await
            .expect("log page is JSON");
        let entry = page
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["data"]["key"] == "binary-in-log"))
            .unwrap_or_else(|| panic!("the put is not in the log page: {page}"));
        assert_eq!(
            entry["data"]["value_base64"],
            base64::engine::general_purpose::STANDARD.encode(value),
            "{entry}"
        );
        assert!(
            entry["data"].get("value").is_none(),
            "no lossy text: {entry}"
        );
    });
}
