//! `raftlog certs init`: writes a CA and node and client certificates for trying TLS out.

use std::path::Path;

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::security::certs;

/// Runs `certs init`; returns the exit status.
pub fn init(nodes: u64, out: &Path) -> i32 {
    if nodes == 0 {
        eprintln!("raftlog certs init: --nodes must be at least 1");
        return EXIT_USAGE;
    }
    match certs::init(nodes, out) {
        Ok(written) => {
            for file in &written.files {
                println!("wrote {}", file.display());
            }
            println!(
                "add to the cluster file (paths relative to it):\n  \"tls\": {{\"ca\": \"{dir}/ca.pem\", \
                 \"cert\": \"{dir}/node-{{id}}.pem\", \"key\": \"{dir}/node-{{id}}-key.pem\"}}\n\
                 keep {dir}/ca-key.pem offline: whoever holds it can mint node certificates",
                dir = out.display()
            );
            0
        }
        Err(e @ certs::CertsError::Exists { .. }) => {
            eprintln!("raftlog certs init: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("raftlog certs init: {e}");
            EXIT_FAILED
        }
    }
}
