//! HTTPS for the API: the rustls configuration of [`crate::ApiTls`] and a listener that does
//! the TLS handshakes off the accept loop, so axum serves TLS streams like plain ones (graceful
//! shutdown and the peer address included).
//!
//! - Built-in: the server's CA (`pki/ca.pem`, shared with the agent link) issues a certificate
//!   at every start for `localhost`, the host name, the loopback addresses, the listener's
//!   address and the names given; the chain sent is `[certificate, CA]`, so a client can pin
//!   the CA by its fingerprint at first contact (`endstate login`).
//! - Files: the operator's chain and key, read again when either file changes (polled every
//!   2 s); a pair that does not load is logged and the previous one kept.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::agents::tls::{SERVER_CERT_LIFETIME, TlsError, io, load_or_create_ca};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; more connections wait in the accept queue.
const CONCURRENT_HANDSHAKES: usize = 128;
/// How often the operator's certificate files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The API's TLS: its rustls configuration, and the operator's files to watch.
pub(crate) struct ApiTlsConfig {
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// The operator's files, to watch.
    files: Option<Arc<FileResolver>>,
}

impl ApiTlsConfig {
    /// The built-in certificate for the listener at `addr` and `names` (DNS names or IPs).
    pub(crate) fn built_in(
        data_dir: &Path,
        addr: SocketAddr,
        names: &[String],
        now_ms: i64,
    ) -> Result<ApiTlsConfig, TlsError> {
        let (ca, _, ca_der, _) = load_or_create_ca(data_dir, now_ms)?;
        let mut dns = vec!["localhost".to_owned()];
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            if !host.is_empty() && !dns.iter().any(|d| d == host) {
                dns.push(host.to_owned());
            }
        }
        let mut ips = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
        for name in names {
            match name.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(name) => dns.push(name.clone()),
                Err(_) => {}
            }
        }
        let (cert_pem, key_pem) = ca
            .issue_server(&dns, &ips, now_ms, SERVER_CERT_LIFETIME)
            .map_err(TlsError::Pki)?;
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Rustls(format!("the API certificate does not parse: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Rustls(format!("the API key does not parse: {e}")))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf, ca_der], key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(ApiTlsConfig {
            config: finish(config),
            files: None,
        })
    }

    /// The operator's certificate chain and key, reloaded when they change.
    pub(crate) fn files(cert: &Path, key: &Path) -> Result<ApiTlsConfig, TlsError> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let resolver = Arc::new(FileResolver {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(load_pair(cert, key)?)),
            stamp: RwLock::new(stamp(cert, key)),
        });
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        Ok(ApiTlsConfig {
            config: finish(config),
            files: Some(resolver),
        })
    }
}

fn finish(mut config: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The operator's pair, swapped when the files change.
#[derive(Debug)]
struct FileResolver {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

impl FileResolver {
    /// Loads the pair again if either file changed; a pair that does not load keeps the old one.
    fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        if now.is_none() || *self.stamp.read().unwrap_or_else(std::sync::PoisonError::into_inner) == now {
            return;
        }
        match load_pair(&self.cert, &self.key) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pair);
                *self.stamp.write().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                tracing::info!(cert = %self.cert.display(), "API certificate reloaded.");
            }
            Err(error) => {
                // Half-written files (the certificate renewed, the key not yet): try again later.
                tracing::warn!(cert = %self.cert.display(), error = %crate::chain(&error), "API certificate not reloaded; the previous one is kept.");
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(io("read", cert))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Rustls(format!("{}: not a PEM certificate chain: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Rustls(format!("{}: no certificate in it", cert.display())));
    }
    let key_pem = std::fs::read(key).map_err(io("read", key))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Rustls(format!("{}: not a PEM private key: {e}", key.display())))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
        TlsError::Rustls(format!(
            "{} and {} do not make a pair: {e}",
            cert.display(),
            key.display()
        ))
    })
}

/// A listener whose streams are TLS streams: a task accepts and does the handshakes (bounded,
/// each with a timeout), the listener hands out those that finished.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `stop` turns true.
    pub(crate) fn start(
        listener: TcpListener,
        tls: &ApiTlsConfig,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
        let handshakes = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
        if let Some(files) = tls.files.clone() {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(RELOAD_EVERY) => files.reload_if_changed(),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.changed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(error = %error, "API listener accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(turn) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _turn = turn;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::info!(%peer, error = %error, "API TLS handshake failed."),
                        Err(_) => tracing::info!(%peer, "API TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended (the server stops): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
