//! The requests of each system: raftlog's `/v1/kv/{key}` and etcd v3's HTTP JSON gateway
//! (`POST /v3/kv/put`, `POST /v3/kv/range`, keys and values base64), so the same clients
//! measure both.

use base64::Engine as _;
use bytes::Bytes;

use super::wire::Call;
use super::Consistency;

/// The system under load.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// raftlog's HTTP API.
    Raftlog,
    /// etcd v3's HTTP JSON gateway (etcd 3.4 and later).
    Etcd,
}

impl System {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Raftlog => "raftlog",
            System::Etcd => "etcd",
        }
    }
}

/// Builds the requests of one run: the value (and its base64 for etcd) is made once.
pub struct Requests {
    system: System,
    consistency: Consistency,
    value: Bytes,
    value_base64: String,
    /// Issue 16: `--user`'s HTTP Basic header, on every request.
    authorization: Option<hyper::header::HeaderValue>,
}

impl Requests {
    /// Requests that write `value_size`-byte values and read with `consistency`.
    pub fn new(system: System, value_size: usize, consistency: Consistency) -> Requests {
        let value = Bytes::from(vec![b'x'; value_size]);
        let value_base64 = base64::engine::general_purpose::STANDARD.encode(&value);
        Requests {
            system,
            consistency,
            value,
            value_base64,
            authorization: None,
        }
    }

    /// These requests, each with `authorization` (`--user`).
    pub fn with_authorization(
        mut self,
        authorization: Option<hyper::header::HeaderValue>,
    ) -> Requests {
        self.authorization = authorization;
        self
    }

    fn authorized(&self, mut call: Call) -> Call {
        call.authorization = self.authorization.clone();
        call
    }

    /// A write of key `bench-{key}`.
    pub fn put(&self, key: u64) -> Call {
        self.authorized(self.put_plain(key))
    }

    fn put_plain(&self, key: u64) -> Call {
        match self.system {
            System::Raftlog => build("PUT", format!("/v1/kv/bench-{key}"), self.value.clone()),
            System::Etcd => build(
                "POST",
                "/v3/kv/put".to_string(),
                Bytes::from(format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    etcd_key(key),
                    self.value_base64
                )),
            ),
        }
    }

    /// A read of key `bench-{key}`.
    pub fn get(&self, key: u64) -> Call {
        self.authorized(self.get_plain(key))
    }

    fn get_plain(&self, key: u64) -> Call {
        match self.system {
            System::Raftlog => build(
                "GET",
                format!("/v1/kv/bench-{key}?consistency={}", self.consistency.name()),
                Bytes::new(),
            ),
            System::Etcd => {
                // etcd's serializable range answers from the member's own state: its stale
                // read. (`lease` is refused before the run: etcd has none.)
                let serializable = if self.consistency == Consistency::Stale {
                    r#","serializable":true"#
                } else {
                    ""
                };
                build(
                    "POST",
                    "/v3/kv/range".to_string(),
                    Bytes::from(format!(r#"{{"key":"{}"{serializable}}}"#, etcd_key(key))),
                )
            }
        }
    }

    /// Whether a read's status is an answer: raftlog says 404 for a key never written.
    pub fn read_answered(&self, status: u16) -> bool {
        (200..300).contains(&status) || (self.system == System::Raftlog && status == 404)
    }
}

/// `bench-{key}` in base64, as etcd's gateway wants keys.
fn etcd_key(key: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("bench-{key}"))
}

fn build(method: &'static str, path: String, body: Bytes) -> Call {
    Call {
        method,
        path,
        body,
        // Only etcd's gateway gets POSTs; raftlog's values are raw bytes, no JSON.
        json: method == "POST",
        authorization: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(call: &Call) -> &str {
        std::str::from_utf8(&call.body).unwrap_or_default()
    }

    #[test]
    fn etcd_requests_speak_the_v3_gateway_in_base64() {
        let requests = Requests::new(System::Etcd, 3, Consistency::Stale);
        let put = requests.put(7);
        assert_eq!(
            (put.method, put.path.as_str(), put.json),
            ("POST", "/v3/kv/put", true)
        );
        // base64("bench-7") = YmVuY2gtNw==, base64("xxx") = eHh4
        assert_eq!(body(&put), r#"{"key":"YmVuY2gtNw==","value":"eHh4"}"#);
        let get = requests.get(7);
        assert_eq!(get.path, "/v3/kv/range");
        assert_eq!(body(&get), r#"{"key":"YmVuY2gtNw==","serializable":true}"#);
        let linearizable = Requests::new(System::Etcd, 3, Consistency::Linearizable);
        assert_eq!(body(&linearizable.get(7)), r#"{"key":"YmVuY2gtNw=="}"#);
    }

    #[test]
    fn raftlog_requests_use_the_kv_endpoint_with_the_consistency_asked() {
        let requests = Requests::new(System::Raftlog, 4, Consistency::Lease);
        let put = requests.put(42);
        assert_eq!(
            (put.method, put.path.as_str(), put.json),
            ("PUT", "/v1/kv/bench-42", false)
        );
        assert_eq!(body(&put), "xxxx");
        let get = requests.get(42);
        assert_eq!(get.method, "GET");
        assert_eq!(get.path, "/v1/kv/bench-42?consistency=lease");
        assert!(requests.read_answered(404));
        assert!(!Requests::new(System::Etcd, 1, Consistency::Stale).read_answered(404));
    }

    #[test]
    fn every_request_carries_the_users_authorization() {
        let value = hyper::header::HeaderValue::from_static("Basic dTpw");
        let requests = Requests::new(System::Raftlog, 1, Consistency::Linearizable)
            .with_authorization(Some(value.clone()));
        assert_eq!(requests.put(1).authorization, Some(value.clone()));
        assert_eq!(requests.get(1).authorization, Some(value));
    }
}
