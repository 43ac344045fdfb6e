//! Range reads (issue 15) against real nodes: `GET /v1/kv?prefix=P` and `?start=A&end=B`,
//! paged with `limit` and `after`, naming the index they reflect, values that are not UTF-8
//! given as base64, and the same consistency choices as single gets.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

/// A range read at node `id`, retried while it answers `503` (`retry_unavailable`): on a
/// loaded machine an election can fall between two requests of a test, and the node then
/// answers `503 no_leader` until it knows the new leader.
async fn range(c: &Cluster, id: u64, query: &str) -> (u16, Value, Option<u64>) {
    let url = format!("http://{}/v1/kv?{query}", c.api(id));
    let answer = retry_unavailable(|| async {
        let response = c.client.get(&url).send().await.expect("range read sent");
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("x-raft-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.json().await.unwrap_or(Value::Null);
        match status {
            503 => Err((status, body.to_string())),
            _ => Ok((status, body, index)),
        }
    })
    .await;
    answer.unwrap_or_else(|(status, body)| {
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::Null),
            None,
        )
    })
}

fn keys(body: &Value) -> Vec<String> {
    body["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| kv["key"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn range_read_pages_a_prefix_in_key_order_and_names_the_index_it_reflects() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec::default());
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        for key in ["app/b", "app/a", "app/c", "apq", "ap", "other"] {
            c.put_eventually(key, &format!("v-{key}"), Duration::from_secs(10))
                .await;
        }
        let last = c.put(leader, "app/d", "v-app/d").await.expect("put")["index"]
            .as_u64()
            .unwrap();
        let (status, body, index) = range(&c, leader, "prefix=app/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(keys(&body), ["app/a", "app/b", "app/c", "app/d"]);
        assert_eq!(body["kvs"][0]["value"], "v-app/a");
        assert_eq!(body["more"], false);
        assert_eq!(index, body["index"].as_u64());
        assert!(index.unwrap() >= last, "{index:?} < {last}");

        // Paging: two at a time, continuing after the last key given.
        let (_, first, _) = range(&c, leader, "prefix=app/&limit=2").await;
        assert_eq!(keys(&first), ["app/a", "app/b"]);
        assert_eq!(first["more"], true);
        let (_, second, _) = range(&c, leader, "prefix=app/&limit=2&after=app/b").await;
        assert_eq!(keys(&second), ["app/c", "app/d"]);

        // start inclusive, end exclusive; keys only.
        let (_, between, _) = range(&c, leader, "start=ap&end=app/c&keys_only=true").await;
        assert_eq!(keys(&between), ["ap", "app/a", "app/b"]);
        assert!(between["kvs"][0].get("value").is_none(), "{between}");

        // A follower serves a stale range from its own state, or forwards a linearizable one.
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
        let (status, body, _) = range(&c, follower, "prefix=app/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(keys(&body).len(), 4);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, stale, stale_index) =
                range(&c, follower, "prefix=app/&consistency=stale").await;
            if keys(&stale).len() == 4 {
                assert!(stale_index.unwrap() >= last);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "follower never caught up: {stale}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn range_read_gives_bytes_that_are_not_utf8_as_base64_and_refuses_bad_queries() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec::default());
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        let url = format!("http://{}/v1/kv/bin%FFkey", c.api(leader));
        // Retried on 503 like the reads below: an election may come first.
        let put = retry_unavailable(|| async {
            let put = c
                .client
                .put(&url)
                .body(vec![0xC3u8, 0x28])
                .send()
                .await
                .expect("put sent");
            match put.status().as_u16() {
                200 => Ok(()),
                status => Err((status, put.text().await.unwrap_or_default())),
            }
        })
        .await;
        assert_eq!(put, Ok(()), "put of a key that is not UTF-8");
        let (status, body, _) = range(&c, leader, "prefix=bin%FF").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["kvs"][0]["key_base64"], "Ymlu/2tleQ==");
        assert_eq!(body["kvs"][0]["value_base64"], "wyg=");
        assert!(body["kvs"][0].get("key").is_none());

        for (query, code) in [
            ("", "bad_request"),
            ("prefix=a&start=b", "bad_request"),
            ("prefix=a&limit=0", "bad_request"),
            ("prefix=a&consistency=psychic", "bad_request"),
            ("prefix=a&bogus=1", "bad_request"),
        ] {
            let (status, body, _) = range(&c, leader, query).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["error"]["code"], code, "{query}: {body}");
            assert!(
                body["error"]["message"].as_str().unwrap_or("").len() > 20,
                "{query}: the message says what to do: {body}"
            );
        }
    });
}

#[test]
fn cli_get_prefix_and_from_to_print_every_page_of_the_range() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec::default());
        c.wait_for_leader(Duration::from_secs(10)).await;
        for i in 0..1205 {
            c.put_eventually(
                &format!("p/{i:05}"),
                &format!("v{i}"),
                Duration::from_secs(10),
            )
            .await;
        }
        c.put_eventually("q", "outside", Duration::from_secs(10))
            .await;
        let node = c.running()[0];
        let run = |args: &[&str]| {
            let output = std::process::Command::new(support::raftlog_bin())
                .args(args)
                .args(["--addr", c.api(node)])
                .output()
                .expect("raftlog runs");
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        // More than one page (1000 by default): the CLI follows `more` with `after`.
        let (code, stdout, stderr) = run(&["get", "--prefix", "p/"]);
        assert_eq!(code, Some(0), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1205, "{stderr}");
        assert_eq!(lines[0], "p/00000\tv0");
        assert_eq!(lines[1204], "p/01204\tv1204");
        let (code, stdout, _) =
            run(&["get", "--from", "p/00010", "--to", "p/00012", "--keys-only"]);
        assert_eq!(code, Some(0));
        assert_eq!(stdout, "p/00010\np/00011\n");
        let (code, _, stderr) = run(&["get"]);
        assert_eq!(
            code,
            Some(2),
            "a get with neither a key nor a range is a usage error: {stderr}"
        );
        assert!(stderr.contains("--prefix"), "{stderr}");
    });
}
