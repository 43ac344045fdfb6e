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
    /// Issue 16, HTTPS for clients (not served yet): client certificates optional; one that
    /// is presented must chain to the CA, and then names the client's role.
    api_server: Arc<ServerConfig>,
    /// Issue 16: a node's HTTPS client to other nodes' APIs (forwarding, bootstrap probes):
    /// presents the node certificate, trusts only the CA ([`ClusterCaVerifier`]).
    api_client: Arc<ClientConfig>,
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

    /// The HTTPS server configuration for the client API, as of the last (re)load.
    pub fn api_server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.configs().api_server)
    }

    /// The HTTPS client configuration a node uses towards other nodes' client APIs.
    pub fn api_client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.configs().api_client)
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
    let peer_client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(Arc::clone(&roots))
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|e| mismatch(format!("tls.key does not fit tls.cert: {e}")))?;
    let optional_client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| mismatch(format!("cannot build a client verifier from tls.ca: {e}")))?;
    let api_server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_client_cert_verifier(optional_client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| mismatch(format!("tls.key does not fit tls.cert: {e}")))?;
    let api_client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier(verifier)))
        .with_client_auth_cert(chain.clone(), key)
        .map_err(|e| mismatch(format!("tls.key does not fit tls.cert: {e}")))?;
    Ok(Configs {
        peer_server: Arc::new(peer_server),
        peer_client: Arc::new(peer_client),
        api_server: Arc::new(api_server),
        api_client: Arc::new(api_client),
        not_after_unix: not_after_unix(leaf),
    })
}

/// Verifies a server's chain against the cluster CA (and the serverAuth usage) but not its
/// name. Clients reach nodes by IP address or a name the operator chose, while node
/// certificates name `raftlog-node-<id>`; which id sits behind an address is not known to
/// a client. The CA is the cluster's own, so any server certificate it signed is a member.
#[derive(Debug)]
pub struct ClusterCaVerifier(pub Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Makes `ring` the process's default rustls provider, once. reqwest is built with
/// `rustls-no-provider` (its default provider, aws-lc-rs, needs cmake) and panics when it
/// builds any client, HTTPS or not, without a default: so the CLI installs it first thing,
/// and [`http_client_builder`] before any client is built.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err: another provider is already the default, which serves as well.
        let _ = Arc::try_unwrap(provider()).map(|p| p.install_default());
    });
}

/// `reqwest::Client::builder()`, after making sure a rustls crypto provider is installed:
/// every HTTP client of the library and the CLI starts here, so that an embedder who never
/// runs the CLI's `main` gets no panic from reqwest (tests/embedded_without_cli.rs).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// The URL scheme of the client API: `https` with `tls`, else `http`.
pub fn api_scheme(tls: Option<&NodeTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// `builder` set up to reach other nodes' client APIs: over HTTPS with the node's
/// certificate and the cluster CA when `tls` is given.
pub fn api_client_builder(
    builder: reqwest::ClientBuilder,
    tls: Option<&NodeTls>,
) -> reqwest::ClientBuilder {
    match tls {
        Some(tls) => builder.use_preconfigured_tls((*tls.api_client_config()).clone()),
        None => builder,
    }
}

/// The role a client certificate (already verified against the CA) proves: the strongest
/// `raftlog-client-<role>` it names.
pub fn client_role(cert: &CertificateDer<'_>) -> Option<crate::security::Role> {
    crate::security::Role::ALL
        .into_iter()
        .rev()
        .find(|role| names(cert, &super::client_name(role.as_str())))
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

    /// A TLS handshake over an in-memory pipe; the server's view of the client's leaf.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<Option<CertificateDer<'static>>, String> {
        let (a, b) = tokio::io::duplex(64 << 10);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let (accepted, connected) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        connected.map_err(|e| format!("client: {e}"))?;
        let accepted = accepted.map_err(|e| format!("server: {e}"))?;
        Ok(accepted
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()))
    }

    fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in read_certs("ca", ca).unwrap() {
            roots.add(c).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier(verifier)));
        Arc::new(match cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs("cert", cert).unwrap(), read_key(key).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    #[tokio::test]
    async fn the_api_takes_clients_with_or_without_a_certificate_and_reads_the_role() {
        let dir = tempfile::tempdir().unwrap();
        crate::security::certs::init(2, dir.path()).unwrap();
        let file = |name: &str| dir.path().join(name);
        let node = NodeTls::load(
            1,
            TlsPaths {
                ca: file("ca.pem"),
                cert: file("node-1.pem"),
                key: file("node-1-key.pem"),
            },
        )
        .unwrap();
        // By IP address: the node certificate names raftlog-node-1, and the CA is enough.
        let anonymous = handshake(
            node.api_server_config(),
            client_config(&file("ca.pem"), None),
        )
        .await
        .unwrap();
        assert_eq!(anonymous, None);
        let read = client_config(
            &file("ca.pem"),
            Some((&file("client-read.pem"), &file("client-read-key.pem"))),
        );
        let leaf = handshake(node.api_server_config(), read)
            .await
            .unwrap()
            .expect("a cert");
        assert_eq!(client_role(&leaf), Some(crate::security::Role::Read));
        // A node's own HTTPS client presents the node certificate, which names no role.
        let leaf = handshake(node.api_server_config(), node.api_client_config())
            .await
            .unwrap()
            .expect("a cert");
        assert_eq!(client_role(&leaf), None);
        assert!(names(&leaf, "raftlog-node-1"));
        // A server from another CA is refused by the client.
        let other = tempfile::tempdir().unwrap();
        crate::security::certs::init(1, other.path()).unwrap();
        let stranger = NodeTls::load(
            1,
            TlsPaths {
                ca: other.path().join("ca.pem"),
                cert: other.path().join("node-1.pem"),
                key: other.path().join("node-1-key.pem"),
            },
        )
        .unwrap();
        let refused = handshake(
            stranger.api_server_config(),
            client_config(&file("ca.pem"), None),
        )
        .await;
        assert!(refused.is_err(), "{refused:?}");
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
