//! The shared test kit: what tests of several crates (and the benchmarks) need and must not
//! write again. A dev-dependency only (`xtask tidy` checks it).
//!
//! - [`TestCa`]: a certificate authority of the test's own, issuing server certificates for
//!   `localhost` and `127.0.0.1` (current, expired, or from another CA), as PEM files or a
//!   rustls configuration.
//! - [`HttpsServer`]: a real HTTPS server on a free loopback port that answers every request
//!   with a fixed status and body and records each request (line, headers, body), for webhooks,
//!   tickets, artifacts and checks.
//! - [`server::TestServer`]: a real endstate server for one test (free loopback ports, SQLite in
//!   a temporary directory, optionally an agent listener and a paused clock).
//! - [`agent`]: the protocol-level fake agent (enrolment, a real mutual-TLS link, frame by
//!   frame), whose [`agent::dial`] and [`agent::hello`] the benchmarks' simulated fleet uses too.
//! - [`fixtures`]: desired-state documents tests share, as files.
//! - [`git::GitRepo`]: a real Git repository (bare, over `file://`) and a clone to push from.
//! - [`webhook::Receiver`]: a plain-HTTP webhook receiver for tests without a runtime (the CLI's).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod agent;
pub mod fixtures;
pub mod git;
pub mod server;
pub mod webhook;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// A certificate authority of the test's own.
pub struct TestCa {
    ca: endstate_pki::CertificateAuthority,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA, valid from 30 days ago for ten years.
    #[must_use]
    pub fn new(name: &str) -> TestCa {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = endstate_pki::CertificateAuthority::generate(name, now_ms() - 30 * 86_400_000, 3650 * DAY).unwrap();
        let pem = ca.cert_pem().to_owned();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        TestCa { ca, pem, der }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, issued `issued_ago` before now for
    /// `lifetime` (issued 3 days ago for 1 day: expired since yesterday). Certificate and key, PEM.
    #[must_use]
    pub fn server_pair(&self, issued_ago: Duration, lifetime: Duration) -> (String, String) {
        let issued = now_ms() - i64::try_from(issued_ago.as_millis()).unwrap();
        let ips: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
        self.ca
            .issue_server(&["localhost".to_owned()], &ips, issued, lifetime)
            .unwrap()
    }

    /// A current server certificate (a day long) written to `dir` as `NAME.pem` and `NAME.key`;
    /// their paths.
    #[must_use]
    pub fn write_server_pair(&self, dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = self.server_pair(Duration::ZERO, DAY);
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    /// A rustls server configuration with a certificate issued `issued_ago` before now for `lifetime`.
    #[must_use]
    pub fn server_config(&self, issued_ago: Duration, lifetime: Duration) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.server_pair(issued_ago, lifetime);
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// A configuration with a current certificate (a day long).
    #[must_use]
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.server_config(Duration::ZERO, DAY)
    }

    /// A configuration whose certificate ended yesterday.
    #[must_use]
    pub fn expired(&self) -> Arc<rustls::ServerConfig> {
        self.server_config(3 * DAY, DAY)
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    /// `POST /hook HTTP/1.1`.
    pub line: String,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A real HTTPS server on a free loopback port; it runs until the runtime ends.
pub struct HttpsServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpsServer {
    /// Serves `config`, answering every request with `status` and `body` (`connection: close`).
    pub async fn start(config: Arc<rustls::ServerConfig>, status: u16, body: &'static [u8]) -> HttpsServer {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Some(request) = read_request(&mut tls).await else {
                        return;
                    };
                    seen.lock().unwrap().push(request);
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        HttpsServer { url, requests }
    }

    /// The requests received so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut data = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request { line, headers, body })
}
