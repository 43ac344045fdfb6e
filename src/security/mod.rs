//! Security (issue 16): who may talk to a node, and how a deployment proves it.
//!
//! - [`tls`]: loads the cluster CA and a node's certificate and key into the rustls
//!   configurations that the peer transport uses for mutual TLS, and re-reads them on demand
//!   (SIGHUP), so certificates rotate without a restart.
//! - [`certs`]: `raftlog certs init`, a CA and node and client certificates for trying TLS
//!   out.
//! - [`role`]: what a client may do, `read` ⊂ `write` ⊂ `admin`.
//! - [`password`]: Argon2id password hashes for the `auth` section and `raftlog passwd`.
//! - [`warn_if_exposed`]: the start-up warning for a node that listens beyond loopback
//!   without TLS.
//!
//! Identities are DNS names in the certificate's subject alternative names, checked by the
//! same webpki code that verifies the chain: a node is `raftlog-node-<id>`
//! ([`node_name`]), a client with a role is `raftlog-client-<role>` ([`client_name`]).

pub mod certs;
pub mod password;
pub mod role;
pub mod tls;

pub use self::role::Role;

use std::net::SocketAddr;

use crate::raft::NodeId;

/// The DNS subject alternative name that carries node `id`'s identity.
pub fn node_name(id: NodeId) -> String {
    format!("raftlog-node-{id}")
}

/// The DNS subject alternative name of a client certificate with `role`.
pub fn client_name(role: &str) -> String {
    format!("raftlog-client-{role}")
}

/// Logs, once at start, what a node without TLS exposes when it listens beyond loopback:
/// anyone who can reach `raft_addr` from a member's IP address can join the replication
/// stream, and anyone who can reach `api_addr` can read and write every key.
pub fn warn_if_exposed(id: NodeId, raft_addr: SocketAddr, api_addr: SocketAddr, tls: bool) {
    if tls {
        return;
    }
    for (what, addr, exposed) in [
        (
            "peer port",
            raft_addr,
            "Raft traffic (every write, in clear text) and a peer port that trusts a member's \
             IP address as its identity",
        ),
        (
            "client API",
            api_addr,
            "every key and value to anyone who can connect, in clear text, without authentication",
        ),
    ] {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                id,
                %addr,
                "the {what} listens on a non-loopback address without TLS: it exposes {exposed}; \
                 add \"tls\" to the cluster file (see docs/SECURITY.md)"
            );
        }
    }
}
