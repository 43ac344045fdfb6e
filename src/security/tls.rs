//! rustls configurations for mutual TLS between nodes, loaded from PEM files and re-read
//! on demand (SIGHUP) so that certificates rotate without a restart.
//!
//! Trust model: the cluster CA (`tls.ca`) is the only root. A node presents its own chain
//! (`tls.cert`, leaf first) and key (`tls.key`). Both ends of a peer connection verify the
//! other's chain against the CA; the dialer also checks that the acceptor's certificate
//! names the node it dialed (server name `raftlog-node-<id>`), and the acceptor checks that
//! the dialer's certificate names the node id its handshake claims ([`names`]), before it
//! reads a single Raft message.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::raft::NodeId;

/// Where a node's TLS material lives (already resolved: absolute or relative to the
/// working directory, `{id}` replaced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate(s), PEM.
    pub ca: PathBuf,
    /// This node's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS material could not be used. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("tls.{field} {}: {why}", path.display())]
    File {
        /// `ca`, `cert` or `key`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong, and the remedy.
        why: String,
    },
    /// The files are readable but do not fit together or do not fit this node.
    #[error("tls ({}): {why}", cert.display())]
    Mismatch {
        /// The node's certificate file.
        cert: PathBuf,
        /// What was wrong, and the remedy.
        why: String,
    },
}

/// The rustls configurations built from one reading of the files.
struct Configs {
    /// Accepts peers: requires a client certificate that chains to the CA.
    peer_server: Arc<ServerConfig>,
    /// Dials peers: presents this node's certificate, trusts only the CA.
    peer_client: Arc<ClientConfig>,
    /// When this node's leaf certificate expires, in seconds since the Unix epoch.
    not_after_unix: Option<u64>,
}

/// A node's TLS material, re-readable while in use.
pub struct NodeTls {
    id: NodeId,
    paths: TlsPaths,
    current: RwLock<Arc<Configs>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("id", &self.id)
            .field("paths", &self.paths)
            .finish()
    }
}

/// ring rather than aws-lc-rs: it builds with a C compiler alone (aws-lc-rs needs cmake).
/// rustls deprecates it for lacking post-quantum key exchange, which a cluster-internal
/// link whose CA the operator controls can do without for now.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    /// Reads and checks the files: the CA parses, the key matches the certificate, and the
    /// certificate chains to the CA and names node `id`.
    pub fn load(id: NodeId, paths: TlsPaths) -> Result<Arc<NodeTls>, TlsError> {
        let configs = build(id, &paths)?;
        Ok(Arc::new(NodeTls {
            id,
            paths,
            current: RwLock::new(Arc::new(configs)),
        }))
    }

    /// Re-reads the files (certificate rotation). On an error the configuration in use is
    /// kept, so a half-copied file never takes a node off the network.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(self.id, &self.paths)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(configs);
        Ok(())
    }

    fn configs(&self) -> Arc<Configs> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The acceptor for inbound peer connections, as of the last (re)load.
    pub fn peer_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.configs().peer_server))
    }

    /// The connector for outbound peer connections, as of the last (re)load.
    pub fn peer_connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.configs().peer_client))
    }

    /// When this node's certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> Option<u64> {
        self.configs().not_after_unix
    }

    /// The files this material comes from.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }
}

/// Whether `cert` (already verified against the CA) carries the DNS name `name`, checked by
/// webpki's own name matching (RFC 6125), not by string search in the DER.
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| TlsError::File {
        field,
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        file_error(format!(
            "cannot read it: {e} (paths are relative to the config file; `raftlog certs init` makes a set)"
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "holds no \"BEGIN CERTIFICATE\" block; expected PEM certificates".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_error = |why: String| TlsError::File {
        field: "key",
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        file_error(format!(
            "cannot read it: {e} (paths are relative to the config file)"
        ))
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        file_error(format!(
            "no PEM private key in it ({e}); expected PKCS#8, PKCS#1 or SEC1"
        ))
    })
}

fn build(id: NodeId, paths: &TlsPaths) -> Result<Configs, TlsError> {
    let ca = read_certs("ca", &paths.ca)?;
    let chain = read_certs("cert", &paths.cert)?;
    let key = read_key(&paths.key)?;
    let mismatch = |why: String| TlsError::Mismatch {
        cert: paths.cert.clone(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| TlsError::File {
            field: "ca",
            path: paths.ca.clone(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let versions = |e: rustls::Error| mismatch(format!("TLS setup failed: {e}"));

    // The node's own certificate must pass the checks its peers will apply, or every peer
    // would refuse it: say so at start, naming the file, instead of failing every dial.
    let leaf = &chain[0];
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| mismatch(format!("cannot build a verifier from tls.ca: {e}")))?;
    let own_name = ServerName::try_from(super::node_name(id))
        .map_err(|e| mismatch(format!("node id {id} makes no DNS name: {e}")))?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        leaf,
        &chain[1..],
        &own_name,
        &[],
        UnixTime::now(),
    )
    .map_err(|e| {
        mismatch(format!(
            "this node's certificate fails the check its peers make: {e}; it must be signed by \
             tls.ca, be valid now, and carry the DNS SAN {} (`raftlog certs init` makes one)",
            super::node_name(id)
        ))
    })?;

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| mismatch(format!("cannot build a client verifier from tls.ca: {e}")))?;
    let peer_server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| mismatch(format!("tls.key does not fit tls.cert: {e}")))?;
    let peer_client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(Arc::clone(&roots))
        .with_client_auth_cert(chain.clone(), key)
        .map_err(|e| mismatch(format!("tls.key does not fit tls.cert: {e}")))?;
    Ok(Configs {
        peer_server: Arc::new(peer_server),
        peer_client: Arc::new(peer_client),
        not_after_unix: not_after_unix(leaf),
    })
}

/// The leaf's notAfter, for the expiry gauge in `/metrics`: webpki checks it but does not
/// expose it, and a full X.509 parser is a large dependency for one field.
fn not_after_unix(cert: &CertificateDer<'_>) -> Option<u64> {
    x509_validity_not_after(cert.as_ref())
}

/// Minimal DER walk to `tbsCertificate.validity.notAfter` (RFC 5280 §4.1): SEQUENCE
/// (certificate) → SEQUENCE (tbs) → [0] version? → serial → signature alg → issuer →
/// validity SEQUENCE { notBefore, notAfter }. Returns `None` on anything unexpected.
fn x509_validity_not_after(der: &[u8]) -> Option<u64> {
    fn header(buf: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *buf.first()?;
        let first = *buf.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let count = first & 0x7f;
        if count == 0 || count > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..count {
            len = (len << 8) | *buf.get(2 + i)? as usize;
        }
        Some((tag, 2 + count, len))
    }
    fn enter(buf: &[u8]) -> Option<&[u8]> {
        let (_, head, len) = header(buf)?;
        buf.get(head..head.checked_add(len)?)
    }
    fn skip(buf: &[u8]) -> Option<&[u8]> {
        let (_, head, len) = header(buf)?;
        buf.get(head.checked_add(len)?..)
    }
    let tbs = enter(enter(der)?)?;
    let mut rest = tbs;
    if *rest.first()? == 0xa0 {
        rest = skip(rest)?; // explicit version
    }
    rest = skip(rest)?; // serial
    rest = skip(rest)?; // signature algorithm
    rest = skip(rest)?; // issuer
    let validity = enter(rest)?;
    let not_after = skip(validity)?;
    let (tag, head, len) = header(not_after)?;
    let text = std::str::from_utf8(not_after.get(head..head + len)?).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY.
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    // Days from the civil date (Howard Hinnant's algorithm), then seconds.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_is_read_from_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["raftlog-node-1".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-09T00:00:00Z
        assert_eq!(not_after_unix(cert.der()), Some(1_941_321_600));
    }

    #[test]
    fn names_matches_only_the_san_it_carries() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["raftlog-node-2".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(names(cert.der(), "raftlog-node-2"));
        assert!(!names(cert.der(), "raftlog-node-1"));
        assert!(!names(cert.der(), "raftlog-node-22"));
    }
}
