//! The server's certificate authority on disk and the TLS configuration of the agent listener.
//!
//! Layout under the data directory:
//!
//! ```text
//! pki/ca.pem       the CA certificate (public)
//! pki/ca.key       the CA key, mode 0600
//! ```
//!
//! The listener's own certificate is issued anew at every start (for `localhost`, the loopback
//! addresses and the listener's address), so it never needs renewing while the CA lasts.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use endstate_pki::CertificateAuthority;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The listener certificate's lifetime: a year; it is reissued at every start.
pub(crate) const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Why the agent link's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the CA files failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CA or a certificate could not be made or read.
    #[error("certificate authority")]
    Pki(#[source] endstate_pki::PkiError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The CA, its PEM, the fingerprint agents check, and the listener's rustls configuration.
pub(crate) struct AgentTls {
    pub(crate) ca: CertificateAuthority,
    pub(crate) ca_pem: String,
    pub(crate) ca_sha256: String,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

impl AgentTls {
    /// Loads the CA from `data_dir/pki` (creating it on first start) and issues the listener's
    /// certificate for `names` and `ips`.
    pub(crate) fn load_or_create(
        data_dir: &Path,
        names: &[String],
        ips: &[IpAddr],
        now_ms: i64,
    ) -> Result<AgentTls, TlsError> {
        let (ca, ca_pem, ca_der, ca_sha256) = load_or_create_ca(data_dir, now_ms)?;
        let (server_cert, server_key) = ca
            .issue_server(names, ips, now_ms, SERVER_CERT_LIFETIME)
            .map_err(TlsError::Pki)?;
        let server_config = server_config(&ca_der, &server_cert, &server_key)?;
        Ok(AgentTls {
            ca,
            ca_pem,
            ca_sha256,
            server_config,
        })
    }
}

/// The server's CA from `data_dir/pki`, created on first start: the CA, its PEM, its DER and
/// the SHA-256 of its DER (hex). The agent link and the API's built-in certificate share it.
pub(crate) fn load_or_create_ca(
    data_dir: &Path,
    now_ms: i64,
) -> Result<(CertificateAuthority, String, CertificateDer<'static>, String), TlsError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = data_dir.join("pki");
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    let ca = if cert_path.exists() {
        let cert = read(&cert_path)?;
        let key = read(&key_path)?;
        CertificateAuthority::from_pem(&cert, &key).map_err(TlsError::Pki)?
    } else {
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("protect", &dir))?;
        let ca = CertificateAuthority::generate("endstate agents CA", now_ms, endstate_pki::DEFAULT_CA_VALIDITY)
            .map_err(TlsError::Pki)?;
        let (cert, key) = ca.to_pem();
        write_new(&key_path, &key, 0o600)?;
        write_new(&cert_path, &cert, 0o644)?;
        ca
    };
    let ca_pem = ca.cert_pem().to_owned();
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| TlsError::Rustls(format!("the CA certificate does not parse: {e}")))?;
    let ca_sha256 = hex(&Sha256::digest(ca_der.as_ref()));
    Ok((ca, ca_pem, ca_der, ca_sha256))
}

/// Mutual TLS: the client must present a certificate issued by the CA (checked by rustls:
/// signature, validity, client-auth usage); who it is and whether it is revoked is checked after
/// the handshake against the store.
fn server_config(
    ca_der: &CertificateDer<'static>,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_der.clone())
        .map_err(|e| TlsError::Rustls(format!("the CA is not a usable root: {e}")))?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let chain = vec![
        CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Rustls(format!("the server certificate does not parse: {e}")))?,
    ];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Rustls(format!("the server key does not parse: {e}")))?;
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io("read", path))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(text.as_bytes()).map_err(io("write", path))?;
    file.sync_all().map_err(io("sync", path))
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_path_buf();
    move |source| TlsError::Io { op, path, source }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
