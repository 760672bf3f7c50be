//! The agent process: enrolment, its identity on disk, and the link to the server (a websocket on
//! mutual TLS) that carries hello, observations, keepalives, desired instance sets, logs and
//! certificate renewal.
//!
//! # Identity (under `<data-dir>/identity/`)
//!
//! ```text
//! key.pem        the agent's private key, mode 0600, generated here and never sent
//! cert.pem       its client certificate, signed by the server's CA
//! ca.pem         the server's CA: the only root the agent trusts on the link
//! identity.json  host name, labels, the agent URL, the API server
//! ```
//!
//! A restarted agent reads them and is the same host. `revoke` from the server deletes them.
//!
//! # Guarantees
//!
//! - Enrolment pins the CA when `--ca-sha256` is given: a CA whose SHA-256 differs is refused
//!   before anything is stored.
//! - Observations go to the durable buffer first, and leave it only when the server acknowledged
//!   them; after a reconnection the unacknowledged ones are sent again, oldest first, before the
//!   actual state. The server stores each seq once.
//! - Reconnection waits with exponential backoff (0.5 s doubling to 10 s) and ±50% jitter, so a
//!   restarted server is not hit by every agent at once.
//! - The certificate is renewed on the link at 2/3 of its lifetime and used from the next
//!   connection.
//! - A link on which nothing arrives for 3 keepalive intervals (each keepalive goes with a
//!   websocket ping the server answers) is dropped and redialled, so a server that vanished
//!   without closing the connection is noticed within seconds, not TCP's minutes.
//!
//! # Caveats
//!
//! - Enrolment speaks plain HTTP to the API server (reqwest is built without TLS here): the join
//!   token is exposed to the network path. Use it on a trusted network or through a TLS proxy;
//!   the link itself is always mutual TLS.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endstate_agent_proto::{
    ActualState, FromAgent, FromServer, Hello, Keepalive, Logs, Observations, Observed, Renew, SUPPORTED_VERSIONS,
    decode_from_server, encode, limits,
};
use endstate_types::{HostName, Labels};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::buffer::{BufferLimits, ObservationBuffer, SyncPolicy};
use crate::runtime::{Runtime, RuntimeConfig};

/// How the agent is started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The API server, `http://host:port`, for enrolment.
    pub server: String,
    /// A join token, needed only for the first start.
    pub join_token: Option<String>,
    /// The expected SHA-256 of the server's CA (hex), checked at enrolment.
    pub ca_sha256: Option<String>,
    /// The host name to enrol as.
    pub host: String,
    /// Labels to ask for (the join token's win).
    pub labels: BTreeMap<String, String>,
    /// Where the identity, the buffer and the instances live.
    pub data_dir: PathBuf,
    /// Where relative artifact paths are resolved.
    pub artifact_root: PathBuf,
    /// Between two keepalives.
    pub keepalive: Duration,
    /// PEM files of CAs trusted besides the platform's for `https` artifacts and HTTP checks.
    pub trusted_ca_files: Vec<PathBuf>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory or the identity files.
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
    /// No identity yet and no join token to get one.
    #[error("this agent is not enrolled: give --join-token (from `endstate token create --join`)")]
    NotEnrolled,
    /// The server refused the enrolment.
    #[error("enrolment refused by {server}: {reason}")]
    EnrolRefused {
        /// The API server.
        server: String,
        /// What it said.
        reason: String,
    },
    /// The CA received is not the one expected.
    #[error("the server's CA has SHA-256 {found}, expected {expected}; refusing to trust it")]
    CaMismatch {
        /// What `--ca-sha256` said.
        expected: String,
        /// What the server sent.
        found: String,
    },
    /// Key, certificate or TLS setup.
    #[error("identity: {0}")]
    Identity(String),
    /// A `--trust-ca` file cannot be used.
    #[error("{0}")]
    TrustedCa(String),
    /// The server revoked this host.
    #[error("the server revoked this host: {0}; its identity was deleted, enrol again with a new join token")]
    Revoked(String),
    /// The process runtime failed to start.
    #[error("the process runtime")]
    Runtime(#[source] crate::runtime::RuntimeError),
    /// The observation buffer failed.
    #[error("the observation buffer")]
    Buffer(#[source] crate::buffer::BufferError),
}

/// The saved identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdentityFile {
    host: String,
    labels: BTreeMap<String, String>,
    agent_url: String,
    server: String,
}

/// Runs the agent until `shutdown` resolves (then stops every instance) or the host is revoked.
///
/// # Errors
/// When it cannot enrol, read its identity, or start its runtime; and on revocation.
pub async fn run(options: AgentOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    fs::create_dir_all(&options.data_dir).map_err(io("create", &options.data_dir))?;
    let mut identity = match load_identity(&options.data_dir)? {
        Some(identity) => identity,
        None => enrol(&options).await?,
    };
    // The address the agent is started with wins over the one it stored: a server that moved
    // says where its agents connect now.
    if identity.server.trim_end_matches('/') != options.server.trim_end_matches('/') {
        match ask_endpoint(&options, &identity.host).await {
            Ok(url) => {
                tracing::info!(
                    server = options.server,
                    url,
                    "Started with another server address; its agent endpoint is used."
                );
                identity.agent_url = url;
                identity.server = options.server.clone();
                save_identity(&options.data_dir, &identity)?;
            }
            Err(error) => tracing::warn!(
                server = options.server,
                error,
                "Started with another server address, which did not say where agents connect; trying the stored one."
            ),
        }
    }
    tracing::info!(host = identity.host, url = identity.agent_url, "Agent identity loaded.");

    let buffer = ObservationBuffer::open(
        options.data_dir.join("buffer"),
        BufferLimits {
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            sync: SyncPolicy::Group { appends: 64 },
        },
    )
    .map_err(AgentError::Buffer)?;
    let buffer = Arc::new(Mutex::new(buffer));
    let appended = Arc::new(Notify::new());
    let (obs_tx, mut obs_rx) = mpsc::channel::<Observed>(1024);
    let trusted_cas = crate::https::read_trusted_cas(&options.trusted_ca_files).map_err(AgentError::TrustedCa)?;
    let runtime = Runtime::start(
        RuntimeConfig {
            trusted_cas,
            ..RuntimeConfig::new(&options.data_dir, &options.artifact_root)
        },
        obs_tx,
    )
    .await
    .map_err(AgentError::Runtime)?;

    // Observations go to disk before anything else sees them.
    let writer = {
        let (buffer, appended) = (Arc::clone(&buffer), Arc::clone(&appended));
        tokio::spawn(async move {
            while let Some(observed) = obs_rx.recv().await {
                let mut batch = vec![observed];
                while let Ok(more) = obs_rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 512 {
                        break;
                    }
                }
                let buffer = Arc::clone(&buffer);
                let result = tokio::task::spawn_blocking(move || {
                    let mut buffer = lock(&buffer);
                    for observed in batch {
                        buffer.append(observed, now_ms())?;
                    }
                    buffer.sync()
                })
                .await;
                match result {
                    Ok(Ok(())) => appended.notify_one(),
                    Ok(Err(error)) => tracing::error!(error = %error, "Observation buffer append failed."),
                    Err(error) => tracing::error!(error = %error, "Observation buffer task failed."),
                }
            }
        })
    };

    let action_output = runtime.take_action_output().unwrap_or_else(|| mpsc::channel(1).1);
    // Run requests are checked against the CA pinned at enrolment; it does not change while the
    // agent runs (a new enrolment is a new start).
    let ca_pem = read(&options.data_dir.join("identity").join("ca.pem"))?;
    let link = Link {
        ca_pem,
        options: options.clone(),
        agent_url: Mutex::new(identity.agent_url.clone()),
        identity,
        buffer,
        appended,
        runtime: runtime.clone(),
        action_output: tokio::sync::Mutex::new(action_output),
    };
    let result = tokio::select! {
        result = link.run_forever() => result,
        () = shutdown => Ok(()),
    };
    tracing::info!("Agent stopping: stopping its instances.");
    runtime.shutdown().await;
    writer.abort();
    result
}

struct Link {
    options: AgentOptions,
    identity: IdentityFile,
    /// Where the link connects: the identity's, until the server says it moved.
    agent_url: Mutex<String>,
    buffer: Arc<Mutex<ObservationBuffer>>,
    appended: Arc<Notify>,
    runtime: Runtime,
    /// The CA pinned at enrolment, which signs run requests.
    ca_pem: String,
    /// Live output of running actions, forwarded while connected (dropped while not).
    action_output: tokio::sync::Mutex<mpsc::Receiver<endstate_agent_proto::ActionOutput>>,
}

/// How a connection ended.
enum Ended {
    Lost(String),
    Revoked(String),
}

impl Link {
    async fn run_forever(&self) -> Result<(), AgentError> {
        let mut failures: u32 = 0;
        loop {
            let started = std::time::Instant::now();
            match self.connect_once().await {
                Ok(Ended::Revoked(reason)) | Err(Ended::Revoked(reason)) => {
                    let dir = self.options.data_dir.join("identity");
                    let _ = fs::remove_dir_all(&dir);
                    return Err(AgentError::Revoked(reason));
                }
                Ok(Ended::Lost(reason)) | Err(Ended::Lost(reason)) => {
                    tracing::warn!(reason, "Link to the server lost; reconnecting.");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            // Every third failure in a row, ask the API where agents connect now: the server may
            // have moved. The pinned CA still decides whom the link trusts.
            if failures.is_multiple_of(3) {
                match ask_endpoint(&self.options, &self.identity.host).await {
                    Ok(url) if url != *lock(&self.agent_url) => {
                        tracing::info!(url, "The server moved; connecting to its new agent endpoint.");
                        *lock(&self.agent_url) = url.clone();
                        let moved = IdentityFile {
                            agent_url: url,
                            server: self.options.server.clone(),
                            ..self.identity.clone()
                        };
                        if let Err(error) = save_identity(&self.options.data_dir, &moved) {
                            tracing::warn!(error = %error, "Could not store the new agent endpoint.");
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::info!(error, "Could not ask the server where agents connect."),
                }
            }
            tokio::time::sleep(backoff(failures)).await;
        }
    }

    async fn connect_once(&self) -> Result<Ended, Ended> {
        let lost = |what: &'static str| move |e: &dyn std::fmt::Display| Ended::Lost(format!("{what}: {e}"));
        let config = self.tls_config().map_err(|e| Ended::Lost(e.to_string()))?;
        let url = &lock(&self.agent_url).clone();
        let (host, port) = url_host_port(url).ok_or_else(|| Ended::Lost(format!("bad agent URL {url}")))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| Ended::Lost(format!("connecting to {host}:{port} timed out")))?
        .map_err(|e| lost("connect")(&e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| Ended::Lost(format!("server name {host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| lost("TLS")(&e))?;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(limits::MAX_FRAME_BYTES);
        ws_config.max_frame_size = Some(limits::MAX_FRAME_BYTES);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(ws_config))
            .await
            .map_err(|e| lost("websocket")(&e))?;
        let (mut sink, mut stream) = ws.split();

        let facts = crate::facts::collect(Path::new("/"));
        let labels: Labels = self.identity.labels.clone().into_iter().collect();
        let hello = FromAgent::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: HostName(self.identity.host.clone()),
            labels,
            facts: facts.clone(),
        });
        let mut sent_facts = facts;
        send(&mut sink, &hello).await?;
        match stream.next().await {
            Some(Ok(WsMessage::Text(text))) => match decode_from_server(text.as_bytes()) {
                Ok(FromServer::Welcome(welcome)) => {
                    tracing::info!(
                        version = welcome.version,
                        server = welcome.server_version,
                        "Connected to the server."
                    );
                }
                Ok(FromServer::Refused(refused)) => return Err(Ended::Lost(format!("refused: {}", refused.reason))),
                Ok(FromServer::Revoke(revoke)) => return Err(Ended::Revoked(revoke.reason)),
                Ok(other) => return Err(Ended::Lost(format!("expected welcome, got {}", other.type_name()))),
                Err(error) => return Err(Ended::Lost(format!("bad welcome: {error}"))),
            },
            other => return Err(Ended::Lost(format!("no welcome: {other:?}"))),
        }

        // Buffered observations first, oldest first; then the actual state.
        let mut sent = self.flush(&mut sink, 0).await?;
        let last_seq = lock(&self.buffer).stats().last_seq;
        let actual = FromAgent::ActualState(ActualState {
            generation: self.runtime.generation(),
            last_seq,
            instances: self.runtime.actual().await,
        });
        send(&mut sink, &actual).await?;

        let mut keepalive = tokio::time::interval(self.options.keepalive);
        keepalive.tick().await;
        let mut keepalive_seq = 0;
        let mut renew_check = tokio::time::interval(Duration::from_secs(60));
        let mut facts_check = tokio::time::interval(Duration::from_secs(60));
        facts_check.tick().await;
        // A server (or a path) that vanished without a FIN would otherwise be noticed only by
        // TCP's retransmission timeout: every keepalive goes with a websocket ping, and a link on
        // which nothing (not even a pong) arrived for 3 intervals is dropped and redialled.
        let mut last_heard = tokio::time::Instant::now();
        let mut action_output = self.action_output.lock().await;
        // Output from while the link was down is stale: it is in the results' tails.
        while action_output.try_recv().is_ok() {}
        loop {
            tokio::select! {
                Some(piece) = action_output.recv() => {
                    send(&mut sink, &FromAgent::ActionOutput(piece)).await?;
                }
                frame = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    let text = match frame {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(_))) | None => return Ok(Ended::Lost("closed by the server".into())),
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Ok(Ended::Lost(format!("connection error: {error}"))),
                    };
                    let message = match decode_from_server(text.as_bytes()) {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(error = %error, "The server sent a frame the protocol refuses; ignored.");
                            continue;
                        }
                    };
                    match message {
                        FromServer::Ack(ack) => {
                            let buffer = Arc::clone(&self.buffer);
                            let _ = tokio::task::spawn_blocking(move || lock(&buffer).ack(ack.up_to_seq)).await;
                        }
                        FromServer::DesiredInstances(desired) => {
                            let generation = desired.generation;
                            match self.runtime.apply(desired).await {
                                Ok(outcome) => tracing::info!(generation = generation.0, ?outcome, "Desired instances applied."),
                                Err(error) => tracing::error!(generation = generation.0, error = %error, "Desired instances not applied."),
                            }
                        }
                        FromServer::Ping(_) => {
                            keepalive_seq += 1;
                            send(&mut sink, &FromAgent::Keepalive(Keepalive { seq: keepalive_seq })).await?;
                        }
                        FromServer::LogsRequest(request) => {
                            let logs = match self.runtime.logs(&request.instance.0).await {
                                Ok(snapshot) => Logs {
                                    request: request.request,
                                    instance: request.instance,
                                    found: true,
                                    stdout_total: snapshot.stdout.dropped_bytes + snapshot.stdout.tail.len() as u64,
                                    stderr_total: snapshot.stderr.dropped_bytes + snapshot.stderr.tail.len() as u64,
                                    stdout: tail(&snapshot.stdout.text(), limits::MAX_LOG_BYTES),
                                    stderr: tail(&snapshot.stderr.text(), limits::MAX_LOG_BYTES),
                                },
                                Err(_) => Logs {
                                    request: request.request,
                                    instance: request.instance,
                                    found: false,
                                    stdout: String::new(),
                                    stderr: String::new(),
                                    stdout_total: 0,
                                    stderr_total: 0,
                                },
                            };
                            send(&mut sink, &FromAgent::Logs(logs)).await?;
                        }
                        FromServer::Certificate(certificate) => {
                            let path = self.options.data_dir.join("identity").join("cert.pem");
                            match write_file(&path, &certificate.cert_pem, 0o644) {
                                Ok(()) => tracing::info!("Certificate renewed; used from the next connection."),
                                Err(error) => tracing::error!(error = %error, "Renewed certificate not saved."),
                            }
                        }
                        FromServer::RunAction(request) => match crate::actions::check_signature(&self.ca_pem, &request) {
                            Ok(()) => self.runtime.run_action(request).await,
                            Err(reason) => self.runtime.refuse_action(&request, reason).await,
                        },
                        FromServer::CancelAction(cancel) => self.runtime.cancel_action(&cancel.run),
                        FromServer::Revoke(revoke) => return Ok(Ended::Revoked(revoke.reason)),
                        FromServer::Welcome(_) | FromServer::Refused(_) => {}
                    }
                }
                () = self.appended.notified() => {
                    sent = self.flush(&mut sink, sent).await?;
                }
                _ = keepalive.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > self.options.keepalive * 3 {
                        return Ok(Ended::Lost(format!("the server sent nothing for {} ms", silent.as_millis())));
                    }
                    keepalive_seq += 1;
                    send(&mut sink, &FromAgent::Keepalive(Keepalive { seq: keepalive_seq })).await?;
                    sink.send(WsMessage::Ping(Vec::new().into()))
                        .await
                        .map_err(|e| Ended::Lost(format!("send: {e}")))?;
                }
                _ = facts_check.tick() => {
                    let facts = tokio::task::spawn_blocking(|| crate::facts::collect(Path::new("/")))
                        .await
                        .map_err(|e| Ended::Lost(format!("facts task: {e}")))?;
                    if facts != sent_facts {
                        send(&mut sink, &FromAgent::Facts(facts.clone())).await?;
                        sent_facts = facts;
                    }
                }
                _ = renew_check.tick() => {
                    if let Some(csr_pem) = self.renewal_csr() {
                        send(&mut sink, &FromAgent::Renew(Renew { csr_pem })).await?;
                    }
                }
            }
        }
    }

    /// Sends every buffered observation after `after`; returns the last seq sent.
    async fn flush<S>(&self, sink: &mut S, after: u64) -> Result<u64, Ended>
    where
        S: futures_util::Sink<WsMessage> + Unpin,
        S::Error: std::fmt::Display,
    {
        let mut last = after;
        loop {
            let buffer = Arc::clone(&self.buffer);
            let pending = tokio::task::spawn_blocking(move || lock(&buffer).pending_after(last, 1000))
                .await
                .map_err(|e| Ended::Lost(format!("buffer task: {e}")))?
                .map_err(|e| Ended::Lost(format!("buffer: {e}")))?;
            let Some(newest) = pending.last().map(|o| o.seq) else {
                return Ok(last);
            };
            send(sink, &FromAgent::Observations(Observations { observations: pending })).await?;
            last = newest;
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, AgentError> {
        let dir = self.options.data_dir.join("identity");
        let ca = read(&dir.join("ca.pem"))?;
        let cert = read(&dir.join("cert.pem"))?;
        let key = read(&dir.join("key.pem"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(ca.as_bytes())
                    .map_err(|e| AgentError::Identity(format!("ca.pem: {e}")))?,
            )
            .map_err(|e| AgentError::Identity(format!("ca.pem: {e}")))?;
        let chain = vec![
            CertificateDer::from_pem_slice(cert.as_bytes())
                .map_err(|e| AgentError::Identity(format!("cert.pem: {e}")))?,
        ];
        let key =
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| AgentError::Identity(format!("key.pem: {e}")))?;
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| AgentError::Identity(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// A CSR when the certificate is due for renewal.
    fn renewal_csr(&self) -> Option<String> {
        let dir = self.options.data_dir.join("identity");
        let cert = fs::read_to_string(dir.join("cert.pem")).ok()?;
        let ca = fs::read_to_string(dir.join("ca.pem")).ok()?;
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let identity = endstate_pki::verify_agent_cert(&ca, &cert, now).ok()?;
        if !endstate_pki::renew_due(identity.not_before, identity.not_after, now) {
            return None;
        }
        let key = endstate_pki::AgentKey::from_pem(&fs::read_to_string(dir.join("key.pem")).ok()?).ok()?;
        tracing::info!("Certificate due for renewal; asking the server.");
        key.csr(&self.identity.host).ok()
    }
}

async fn send<S>(sink: &mut S, message: &FromAgent) -> Result<(), Ended>
where
    S: futures_util::Sink<WsMessage> + Unpin,
    S::Error: std::fmt::Display,
{
    let bytes = encode(message).map_err(|e| Ended::Lost(format!("encode {}: {e}", message.type_name())))?;
    sink.send(WsMessage::text(String::from_utf8_lossy(&bytes).into_owned()))
        .await
        .map_err(|e| Ended::Lost(format!("send: {e}")))
}

/// Enrols with the join token and saves the identity.
async fn enrol(options: &AgentOptions) -> Result<IdentityFile, AgentError> {
    let token = options.join_token.clone().ok_or(AgentError::NotEnrolled)?;
    let key = endstate_pki::AgentKey::generate().map_err(|e| AgentError::Identity(e.to_string()))?;
    let csr_pem = key
        .csr(&options.host)
        .map_err(|e| AgentError::Identity(e.to_string()))?;
    let request = endstate_api::EnrolRequest {
        join_token: token,
        host: options.host.clone(),
        csr_pem,
        labels: options.labels.clone(),
    };
    let url = format!("{}/v1/agents/enrol", options.server.trim_end_matches('/'));
    let refused = |reason: String| AgentError::EnrolRefused {
        server: options.server.clone(),
        reason,
    };
    // The join token goes over TLS, to the server whose CA is pinned (`--ca-sha256`, or the
    // first one presented); plain HTTP only on loopback.
    let loopback = crate::https::is_loopback_url(&options.server);
    if options.ca_sha256.is_none() && !loopback {
        // Trusting the first CA presented would send the join token to whoever answers.
        return Err(refused(
            "give --ca-sha256 (as `endstate token create --join` prints it): the join token is only sent to a server whose CA is pinned"
                .to_owned(),
        ));
    }
    let pin = if options.server.starts_with("https://") {
        let (tls, pin) = endstate_pki::pin::PinnedCa::client_config(options.ca_sha256.as_deref())
            .map_err(|e| AgentError::Identity(format!("TLS: {e}")))?;
        Some((tls, pin))
    } else if loopback {
        None
    } else {
        return Err(refused(
            "a join token is only sent over TLS: give the server's https:// address (plain http:// only on loopback)"
                .to_owned(),
        ));
    };
    let client = match &pin {
        Some((tls, _)) => reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(tls.clone()),
        None => reqwest::Client::builder().no_proxy(),
    }
    .build()
    .map_err(|e| refused(format!("no HTTP client: {e}")))?;
    let send = |client: reqwest::Client| {
        let request = client.post(&url).json(&request).timeout(Duration::from_secs(30));
        async move { request.send().await }
    };
    let response = match send(client).await {
        Ok(response) => response,
        // The API serves the operator's certificate, not one of the agents' CA: the platform's
        // roots vouch for the server, and the CA it answers with must still be the pinned one.
        Err(error) if options.ca_sha256.is_some() && crate::error_chain(&error).contains("not the one pinned") => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| refused(format!("no HTTP client: {e}")))?;
            send(client)
                .await
                .map_err(|e| refused(format!("cannot reach it: {}", crate::error_chain(&e))))?
        }
        Err(error) => return Err(refused(format!("cannot reach it: {}", crate::error_chain(&error)))),
    };
    if !response.status().is_success() {
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let detail = body.get("detail").and_then(|d| d.as_str()).unwrap_or("no detail");
        return Err(refused(format!("{status}: {detail}")));
    }
    let enrolled: endstate_api::EnrolResponse = response
        .json()
        .await
        .map_err(|e| refused(format!("unreadable answer: {e}")))?;
    let ca_der = CertificateDer::from_pem_slice(enrolled.ca_pem.as_bytes())
        .map_err(|e| AgentError::Identity(format!("the server's CA does not parse: {e}")))?;
    let found = endstate_pki::pin::sha256_hex(ca_der.as_ref());
    // The CA the server signs agents with is the one its API presented.
    if let Some(seen) = pin.as_ref().and_then(|(_, pin)| pin.seen())
        && endstate_pki::pin::sha256_hex(seen.as_ref()) != found
    {
        return Err(AgentError::CaMismatch {
            expected: endstate_pki::pin::sha256_hex(seen.as_ref()),
            found,
        });
    }
    match &options.ca_sha256 {
        Some(expected) if !expected.replace(':', "").eq_ignore_ascii_case(&found) => {
            return Err(AgentError::CaMismatch {
                expected: expected.clone(),
                found,
            });
        }
        Some(_) => {}
        None => tracing::warn!(
            ca_sha256 = found,
            "No --ca-sha256 given (allowed on loopback only): trusting the CA the server sent."
        ),
    }
    let dir = options.data_dir.join("identity");
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    write_file(&dir.join("key.pem"), &key.to_pem(), 0o600)?;
    write_file(&dir.join("cert.pem"), &enrolled.cert_pem, 0o644)?;
    write_file(&dir.join("ca.pem"), &enrolled.ca_pem, 0o644)?;
    let identity = IdentityFile {
        host: enrolled.host,
        labels: enrolled.labels,
        agent_url: enrolled.agent_url,
        server: options.server.clone(),
    };
    save_identity(&options.data_dir, &identity)?;
    tracing::info!(host = identity.host, "Enrolled.");
    Ok(identity)
}

/// Writes `identity/identity.json` (replacing it).
fn save_identity(data_dir: &Path, identity: &IdentityFile) -> Result<(), AgentError> {
    let path = data_dir.join("identity").join("identity.json");
    let json = serde_json::to_string_pretty(identity).unwrap_or_default();
    let temp = path.with_extension("json.new");
    let _ = fs::remove_file(&temp);
    write_file(&temp, &json, 0o644)?;
    fs::rename(&temp, &path).map_err(io("replace", &path))
}

/// Asks the API the agent was started with where agents connect now, proving who it is with
/// its certificate and a fresh signature by its key (`POST /v1/agents/endpoint`).
async fn ask_endpoint(options: &AgentOptions, host: &str) -> Result<String, String> {
    let dir = options.data_dir.join("identity");
    let key_pem = fs::read_to_string(dir.join("key.pem")).map_err(|e| format!("key.pem: {e}"))?;
    let cert_pem = fs::read_to_string(dir.join("cert.pem")).map_err(|e| format!("cert.pem: {e}"))?;
    let ca_pem = fs::read_to_string(dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let key = endstate_pki::AgentKey::from_pem(&key_pem).map_err(|e| e.to_string())?;
    let unix_s = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
    let signature = key
        .sign_message(endstate_api::endpoint_message(host, unix_s).as_bytes())
        .map_err(|e| e.to_string())?;
    let request = endstate_api::EndpointRequest {
        host: host.to_owned(),
        unix_s,
        cert_pem,
        signature_hex: signature.iter().map(|b| format!("{b:02x}")).collect(),
    };
    // The API's certificate comes from the pinned CA (the built-in one) or from a CA the
    // platform trusts (the operator's).
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/v1/agents/endpoint", options.server.trim_end_matches('/'));
    let response = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(format!(
            "{url}: {status}: {}",
            body.get("detail").and_then(|d| d.as_str()).unwrap_or("no detail")
        ));
    }
    let answer: endstate_api::EndpointResponse = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if !answer.agent_url.starts_with("wss://") {
        return Err(format!("{url}: answered {:?}, not a wss:// URL", answer.agent_url));
    }
    Ok(answer.agent_url)
}

fn load_identity(data_dir: &Path) -> Result<Option<IdentityFile>, AgentError> {
    let path = data_dir.join("identity").join("identity.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = read(&path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| AgentError::Identity(format!("{}: {e}", path.display())))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))
}

fn read(path: &Path) -> Result<String, AgentError> {
    fs::read_to_string(path).map_err(io("read", path))
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_path_buf();
    move |source| AgentError::Io { op, path, source }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 0.5 s doubling to 10 s, ±50% jitter from the clock's nanoseconds (no RNG needed for spreading).
fn backoff(failures: u32) -> Duration {
    let base = (500u64 << failures.saturating_sub(1).min(5)).min(10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let jitter = nanos % base;
    Duration::from_millis(base / 2 + jitter)
}

/// `wss://host:port/path` → (host, port).
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("wss://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for failures in 1..20 {
            let delay = backoff(failures).as_millis();
            let base = (500u128 << (failures - 1).min(5)).min(10_000);
            assert!(delay >= base / 2 && delay < base * 3 / 2, "{failures}: {delay}");
        }
    }

    #[test]
    fn agent_urls_split_into_host_and_port() {
        assert_eq!(
            url_host_port("wss://127.0.0.1:7443/v1/agent"),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(url_host_port("wss://[::1]:7443/v1/agent"), Some(("[::1]".into(), 7443)));
        assert_eq!(url_host_port("http://x:1/"), None);
    }
}
