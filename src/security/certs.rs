//! `raftlog certs init`: a throwaway PKI for trying TLS out (issue 16). One CA, one
//! certificate per node with the DNS SAN `raftlog-node-<id>`, and one client certificate
//! per role with the DNS SAN `raftlog-client-<role>`. Keys are ECDSA P-256, written with
//! mode 0600. For production, issue the same names from your own CA.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The client roles a certificate can carry, weakest first.
pub const ROLES: [&str; 3] = ["read", "write", "admin"];

/// How long generated certificates are valid.
const VALIDITY_DAYS: i64 = 365;

/// Why the set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file already exists: refusing to overwrite a CA someone may rely on.
    #[error("{} already exists; refusing to overwrite (remove the directory's certificates or pick another --out)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Key or certificate generation failed.
    #[error("generating {what} failed: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
}

/// The files [`init`] wrote, for the command's summary.
#[derive(Debug)]
pub struct Written {
    /// Every file, in the order written.
    pub files: Vec<PathBuf>,
}

/// Writes `ca.pem`, `ca-key.pem`, `node-<id>.pem`/`node-<id>-key.pem` for ids 1..=`nodes`,
/// and `client-<role>.pem`/`client-<role>-key.pem` for each of [`ROLES`] into `out`.
pub fn init(nodes: u64, out: &Path) -> Result<Written, CertsError> {
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let generate = |what: &str| {
        let what = what.to_string();
        move |source| CertsError::Generate { what, source }
    };
    let now = time_now();
    let mut files = Vec::new();

    let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate("the CA"))?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "raftlog cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now;
    ca_params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate("the CA"))?;
    write_new(out, "ca.pem", &ca_cert.pem(), false, &mut files)?;
    write_new(out, "ca-key.pem", &ca_key.serialize_pem(), true, &mut files)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf = |name: String, common_name: String, file: String| -> Result<(), CertsError> {
        let key = KeyPair::generate().map_err(generate(&common_name))?;
        let mut params = CertificateParams::new(vec![name]).map_err(generate(&common_name))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A node both accepts and dials; a client only dials.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now;
        params.not_after = now + time::Duration::days(VALIDITY_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(generate(&common_name))?;
        write_new(out, &format!("{file}.pem"), &cert.pem(), false, &mut files)?;
        write_new(
            out,
            &format!("{file}-key.pem"),
            &key.serialize_pem(),
            true,
            &mut files,
        )
    };
    for id in 1..=nodes {
        leaf(
            super::node_name(id),
            format!("raftlog node {id}"),
            format!("node-{id}"),
        )?;
    }
    for role in ROLES {
        leaf(
            super::client_name(role),
            format!("raftlog client ({role})"),
            format!("client-{role}"),
        )?;
    }
    Ok(Written { files })
}

/// Now, a minute early: a peer whose clock is slightly behind still accepts the certificate.
fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::minutes(1)
}

fn write_new(
    dir: &Path,
    name: &str,
    text: &str,
    secret: bool,
    files: &mut Vec<PathBuf>,
) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertsError::Exists { path: path.clone() }
        } else {
            CertsError::Write {
                path: path.clone(),
                source,
            }
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| CertsError::Write {
            path: path.clone(),
            source,
        })?;
    files.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tls::{names, NodeTls, TlsPaths};

    #[test]
    fn init_makes_node_certificates_that_load_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        init(2, dir.path()).unwrap();
        let paths = |id: u64| TlsPaths {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join(format!("node-{id}.pem")),
            key: dir.path().join(format!("node-{id}-key.pem")),
        };
        NodeTls::load(1, paths(1)).unwrap();
        NodeTls::load(2, paths(2)).unwrap();
        // Node 2's certificate does not pass as node 1's.
        let err = NodeTls::load(1, paths(2)).unwrap_err().to_string();
        assert!(err.contains("raftlog-node-1"), "{err}");
        let client = std::fs::read(dir.path().join("client-read.pem")).unwrap();
        let client = rustls::pki_types::pem::PemObject::from_pem_slice(&client).unwrap();
        assert!(names(&client, "raftlog-client-read"));
        assert!(!names(&client, "raftlog-client-admin"));
        // A second run does not overwrite the CA.
        assert!(matches!(
            init(2, dir.path()),
            Err(CertsError::Exists { .. })
        ));
    }
}
