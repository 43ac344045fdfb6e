//! Who a client command says it is (issue 16): `--user NAME` with a password from
//! `RAFTLOG_PASSWORD` or typed at a prompt, sent as HTTP Basic on every request; with
//! `--cacert` it speaks HTTPS, trusting that CA, and with `--cert/--key` it presents a client
//! certificate.

use std::io::{BufRead, IsTerminal, Write};

use axum::http::HeaderValue;
use base64::Engine;

use super::Target;

/// The environment variable a client command reads the `--user` password from.
pub const PASSWORD_ENV: &str = "RAFTLOG_PASSWORD";

/// Credentials resolved once per command.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// `Authorization: Basic ...` for `--user`.
    authorization: Option<HeaderValue>,
    /// `--cacert` (and `--cert/--key`): HTTPS.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// `https` once a command was given `--cacert`: one command per process, and every request
/// of it goes to the same cluster.
static SCHEME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The URL scheme of this command's requests.
pub fn scheme() -> &'static str {
    SCHEME.get().copied().unwrap_or("http")
}

/// The rustls client configuration of `--cacert`/`--cert`/`--key`.
fn tls_config(target: &Target) -> Result<Option<rustls::ClientConfig>, String> {
    let Some(cacert) = &target.cacert else {
        if target.client_cert.is_some() {
            return Err(
                "--cert needs --cacert (the cluster CA the nodes' certificates chain to)".into(),
            );
        }
        return Ok(None);
    };
    let cert = match (&target.client_cert, &target.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    https_config(cacert, cert).map(Some)
}

/// An HTTPS client configuration that trusts the cluster CA in `cacert` (by chain, not by
/// name: nodes are reached by address) and presents `cert` (certificate, key) if given.
pub fn https_config(
    cacert: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(cacert)
        .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    for ca in cas {
        let ca = ca.map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
        roots.add(ca).map_err(|e| {
            format!(
                "--cacert {}: not a usable CA certificate: {e}",
                cacert.display()
            )
        })?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::clone(&provider),
    )
    .build()
    .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            crate::security::tls::ClusterCaVerifier(verifier),
        ));
    let config = match cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "--key {} does not fit --cert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

impl Identity {
    /// Resolves `--user` (reading the password); an error says what to do.
    pub fn from_target(target: &Target) -> Result<Identity, String> {
        let tls = tls_config(target)?.map(std::sync::Arc::new);
        if tls.is_some() {
            let _ = SCHEME.set("https");
        }
        let Some(user) = &target.user else {
            return Ok(Identity {
                authorization: None,
                tls,
            });
        };
        if user.is_empty() || user.contains(':') {
            return Err(format!(
                "--user {user:?}: a user name is non-empty and has no ':'"
            ));
        }
        let password = password(user)?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|e| format!("--user {user:?}: cannot make an Authorization header: {e}"))?;
        value.set_sensitive(true);
        Ok(Identity {
            authorization: Some(value),
            tls,
        })
    }

    /// The HTTPS configuration of `--cacert` (and `--cert/--key`), if given.
    pub fn tls_config(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The `Authorization` header to send, if any.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// `builder` with these credentials on every request.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = &self.authorization {
            headers.insert(reqwest::header::AUTHORIZATION, value.clone());
        }
        let builder = builder.default_headers(headers);
        match &self.tls {
            Some(tls) => builder.use_preconfigured_tls((**tls).clone()),
            None => builder,
        }
    }
}

/// The password of `user`: `RAFTLOG_PASSWORD`, else a line read from stdin (with a prompt
/// and echo off at a terminal).
fn password(user: &str) -> Result<String, String> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    match read_secret(&format!("Password for {user}: ")) {
        Ok(Some(password)) => Ok(password),
        Ok(None) => Err(format!(
            "--user {user}: no password: set {PASSWORD_ENV} or give it on stdin"
        )),
        Err(e) => Err(format!(
            "--user {user}: cannot read the password from stdin: {e}"
        )),
    }
}

/// One line from stdin without its line ending, `None` at end of input. At a terminal it
/// shows `prompt` on stderr and switches echo off while the line is typed.
fn read_secret(prompt: &str) -> std::io::Result<Option<String>> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let echo = terminal.then(EchoOff::new).flatten();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(echo);
    if terminal {
        eprintln!();
    }
    Ok((read? > 0).then(|| line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Terminal echo switched off until dropped, so a typed password is not shown.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios they fill in.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) != 0 {
                return None;
            }
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

/// `raftlog passwd`: reads a password (one line) on stdin and prints its Argon2id hash.
pub fn passwd() -> i32 {
    let password = match read_secret("Password: ") {
        Ok(None) => {
            eprintln!("raftlog passwd: no password on stdin (give one line, e.g. `echo -n secret | raftlog passwd`)");
            return super::EXIT_USAGE;
        }
        Ok(Some(password)) => password,
        Err(e) => {
            eprintln!("raftlog passwd: cannot read the password from stdin: {e}");
            return super::EXIT_FAILED;
        }
    };
    if password.is_empty() {
        eprintln!("raftlog passwd: the password is empty; give a non-empty one");
        return super::EXIT_USAGE;
    }
    match crate::security::password::hash(password.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            0
        }
        Err(e) => {
            eprintln!("raftlog passwd: {e}");
            super::EXIT_FAILED
        }
    }
}
