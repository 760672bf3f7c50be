//! The protocol-level fake agent: enrols over HTTP with a join token, keeps its key, certificate
//! and CA in memory, and speaks the agent protocol frame by frame over a real mutual-TLS
//! websocket, so a test decides every frame sent (raw ones included) and sees every frame
//! received. The benchmarks' simulated fleet opens its connections and says hello with the same
//! [`dial`] and [`hello`].
//!
//! Also the helpers agent tests read the server with: timeline events and host views.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use endstate_agent_proto::{
    FromAgent, FromServer, Hello, InstanceId, InstanceStateChange, InstanceStateWord, Observation, Observations,
    Observed, SUPPORTED_VERSIONS, VersionRange, decode_from_server, encode, limits,
};
use endstate_api::{EventView, HostView, Page, Problem};
use endstate_pki::{AgentKey, IssuedCert};
use endstate_types::{Generation, HostName};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::server::TestServer;

/// The longest a test waits for anything: long enough for a loaded machine, short enough that a
/// broken test fails rather than hangs.
pub const WAIT: Duration = Duration::from_secs(15);

/// Installs the process-wide rustls provider (aws-lc-rs), once.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The system's time in milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// What an enrolled agent keeps: its key never left it; the rest came from the enrolment answer.
#[derive(Clone)]
pub struct Identity {
    pub host: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub agent_url: String,
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    /// The same identity with another certificate (a renewed one, or an old one).
    pub fn with_cert(&self, cert_pem: &str) -> Identity {
        Identity {
            cert_pem: cert_pem.to_owned(),
            ..self.clone()
        }
    }

    /// The serial of the certificate, as the server names it.
    pub fn serial(&self) -> String {
        endstate_pki::verify_agent_cert(&self.ca_pem, &self.cert_pem, now_ms())
            .unwrap()
            .serial
    }

    /// A CSR for this identity's own key.
    pub fn csr(&self, host: &str) -> String {
        AgentKey::from_pem(&self.key_pem).unwrap().csr(host).unwrap()
    }

    /// TLS client settings: the server's CA as the only root, this certificate as client auth.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// TLS client settings trusting `ca_pem`, with a client certificate or none.
pub fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A certificate for `host` from a CA of its own (not the server's), with its key.
pub fn foreign_cert(host: &str) -> (IssuedCert, String) {
    let now = now_ms();
    let ca = endstate_pki::CertificateAuthority::generate("rogue CA", now, endstate_pki::DEFAULT_CA_VALIDITY).unwrap();
    let key = AgentKey::generate().unwrap();
    let issued = ca
        .sign_agent(&key.csr(host).unwrap(), host, now, Duration::from_secs(3600))
        .unwrap();
    (issued, key.to_pem())
}

/// `POST /v1/join-tokens` as the admin; the secret.
pub async fn join_token(server: &TestServer, body: serde_json::Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/join-tokens", server.url))
        .bearer_auth(&server.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let created: endstate_api::CreatedJoinToken = response.json().await.unwrap();
    assert!(created.secret.starts_with("esj_"), "{created:?}");
    created.secret
}

/// `POST /v1/agents/enrol` (no bearer token), answered as it comes.
pub async fn enrol_request(
    server: &TestServer,
    token: &str,
    host: &str,
    csr_pem: &str,
    labels: &[(&str, &str)],
) -> reqwest::Response {
    let request = endstate_api::EnrolRequest {
        join_token: token.to_owned(),
        host: host.to_owned(),
        csr_pem: csr_pem.to_owned(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    };
    reqwest::Client::new()
        .post(format!("{}/v1/agents/enrol", server.url))
        .json(&request)
        .send()
        .await
        .unwrap()
}

/// Enrols `host` with `token` and a fresh key; panics unless the server issues a certificate.
pub async fn enrol_with(server: &TestServer, token: &str, host: &str, labels: &[(&str, &str)]) -> Identity {
    let key = AgentKey::generate().unwrap();
    let response = enrol_request(server, token, host, &key.csr(host).unwrap(), labels).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let enrolled: endstate_api::EnrolResponse = response.json().await.unwrap();
    Identity {
        host: enrolled.host,
        key_pem: key.to_pem(),
        cert_pem: enrolled.cert_pem,
        ca_pem: enrolled.ca_pem,
        agent_url: enrolled.agent_url,
        labels: enrolled.labels,
    }
}

/// Enrols `host` with a new join token carrying no labels of its own.
pub async fn enrol(server: &TestServer, host: &str, labels: &[(&str, &str)]) -> Identity {
    let token = join_token(server, serde_json::json!({})).await;
    enrol_with(server, &token, host, labels).await
}

/// The status and problem details of a refused request.
pub async fn problem(response: reqwest::Response) -> (u16, Problem) {
    let status = response.status().as_u16();
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.status, status, "{problem:?}");
    (status, problem)
}

/// Events of one kind (and host), newest first.
pub async fn events(server: &TestServer, kind: &str, host: Option<&str>) -> Vec<EventView> {
    let mut path = format!("/v1/timeline?kind={kind}&limit=1000");
    if let Some(host) = host {
        path.push_str(&format!("&host={host}"));
    }
    let page: Page<EventView> = server.get_json(&path).await;
    page.items
}

/// Waits (bounded) until an event of `kind` (and host) satisfies `pick`, and returns it.
pub async fn wait_for_event(
    server: &TestServer,
    kind: &str,
    host: Option<&str>,
    pick: impl Fn(&EventView) -> bool,
) -> EventView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = events(server, kind, host).await;
        if let Some(event) = found.iter().find(|e| pick(e)) {
            return event.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("no {kind} event for {host:?} as expected; found {found:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host as `GET /v1/hosts` shows it.
pub async fn host_view(server: &TestServer, host: &str) -> HostView {
    let page: Page<HostView> = server.get_json("/v1/hosts").await;
    page.items
        .into_iter()
        .find(|h| h.name == host)
        .unwrap_or_else(|| panic!("host {host} is not listed"))
}

/// Waits (bounded) until `GET /v1/hosts` shows the host with this liveness.
pub async fn wait_for_liveness(server: &TestServer, host: &str, liveness: &str) -> HostView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = host_view(server, host).await;
        if view.liveness == liveness {
            return view;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("host {host} never became {liveness}: {view:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One instance state observation.
pub fn instance_state(seq: u64, instance: &str, state: InstanceStateWord) -> Observation {
    Observation {
        seq,
        at_unix_ms: u64::try_from(now_ms()).unwrap(),
        observed: Observed::InstanceState(InstanceStateChange {
            instance: InstanceId(instance.to_owned()),
            generation: Generation(1),
            state,
            version: "1.0".to_owned(),
            pid: None,
            exit_code: None,
            signal: None,
            restarts: 0,
            detail: String::new(),
        }),
    }
}

/// A batch of instance state observations, one per seq, cycling through states so each is a
/// transition.
pub fn observations(seqs: RangeInclusive<u64>, instance: &str) -> FromAgent {
    const STATES: [InstanceStateWord; 4] = [
        InstanceStateWord::Starting,
        InstanceStateWord::Running,
        InstanceStateWord::Exited,
        InstanceStateWord::BackingOff,
    ];
    FromAgent::Observations(Observations {
        observations: seqs
            .map(|seq| instance_state(seq, instance, STATES[usize::try_from(seq).unwrap() % STATES.len()]))
            .collect(),
    })
}

/// An agent link: a websocket over the client side of TLS.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// One connection of a fake agent.
pub struct FakeAgent {
    pub host: String,
    /// When set, [`recv`](Self::recv) sends a keepalive this often while it waits, as a live
    /// agent does; otherwise the agent is silent unless a test sends something.
    pub keepalive_every: Option<Duration>,
    keepalive_seq: u64,
    ws: Ws,
}

impl FakeAgent {
    /// Connects with the identity's certificate: TCP, TLS, websocket upgrade. Nothing is sent yet.
    pub async fn connect(identity: &Identity) -> Result<FakeAgent, String> {
        FakeAgent::connect_with(&identity.agent_url, identity.client_config(), &identity.host).await
    }

    /// Connects to `url` with any TLS client settings.
    pub async fn connect_with(url: &str, config: Arc<rustls::ClientConfig>, host: &str) -> Result<FakeAgent, String> {
        let ws = dial(url, config, ws_config(), WAIT).await?;
        Ok(FakeAgent {
            host: host.to_owned(),
            keepalive_every: None,
            keepalive_seq: 0,
            ws,
        })
    }

    /// Connects, says hello and expects a welcome in version 1.
    pub async fn join(identity: &Identity) -> FakeAgent {
        let mut agent = FakeAgent::connect(identity).await.unwrap();
        let host = agent.host.clone();
        match agent.hello(&host).await {
            Some(FromServer::Welcome(welcome)) => assert_eq!(welcome.version, 1, "{welcome:?}"),
            other => panic!("{host}: expected a welcome, got {other:?}"),
        }
        agent
    }

    /// Sends a hello naming `host` (send errors are ignored: a refusing server may have closed
    /// already) and returns the first frame the server answers, or `None` when it closed.
    pub async fn hello(&mut self, host: &str) -> Option<FromServer> {
        self.hello_with(hello(host, SUPPORTED_VERSIONS, BTreeMap::new())).await
    }

    /// Sends this hello and returns the first frame the server answers, as [`hello`](Self::hello).
    pub async fn hello_with(&mut self, hello: FromAgent) -> Option<FromServer> {
        let _ = self.send_raw(text(&hello)).await;
        self.recv().await
    }

    /// Sends a protocol message; panics when the connection is gone.
    pub async fn send(&mut self, message: &FromAgent) {
        let host = self.host.clone();
        self.send_raw(text(message))
            .await
            .unwrap_or_else(|e| panic!("{host}: cannot send {}: {e}", message.type_name()));
    }

    /// Sends the next keepalive of this connection.
    pub async fn keepalive(&mut self) -> Result<(), String> {
        self.keepalive_seq += 1;
        let keepalive = FromAgent::Keepalive(endstate_agent_proto::Keepalive {
            seq: self.keepalive_seq,
        });
        self.send_raw(text(&keepalive)).await
    }

    /// Sends any websocket frame.
    pub async fn send_raw(&mut self, frame: WsMessage) -> Result<(), String> {
        tokio::time::timeout(WAIT, self.ws.send(frame))
            .await
            .map_err(|_| "send timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// The next protocol frame from the server, or `None` when the connection closed (or failed).
    /// Panics when nothing comes within [`WAIT`], or on a frame the protocol refuses.
    pub async fn recv(&mut self) -> Option<FromServer> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let until = match self.keepalive_every {
                Some(every) => deadline.min(tokio::time::Instant::now() + every),
                None => deadline,
            };
            let frame = match tokio::time::timeout_at(until, self.ws.next()).await {
                Ok(frame) => frame,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    panic!("{}: nothing from the server within {WAIT:?}", self.host)
                }
                Err(_) => {
                    if self.keepalive().await.is_err() {
                        return None;
                    }
                    continue;
                }
            };
            match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    return Some(
                        decode_from_server(text.as_bytes())
                            .unwrap_or_else(|e| panic!("the server sent a refused frame {text}: {e}")),
                    );
                }
                Some(Ok(WsMessage::Binary(bytes))) => panic!("the server sent a binary frame: {bytes:?}"),
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Runs `work` (calls to the API, say) while sending keepalives every
    /// [`keepalive_every`](Self::keepalive_every) (100 ms when unset), so a short keepalive
    /// interval does not declare the agent silent meanwhile. Frames from the server wait.
    pub async fn while_alive<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        let mut tick = tokio::time::interval(self.keepalive_every.unwrap_or(Duration::from_millis(100)));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    let _ = self.keepalive().await;
                }
            }
        }
    }

    /// Reads frames until `pick` takes one, skipping the others (a desired set sent by the
    /// server's periodic refresh, say). Panics when the connection closes first.
    pub async fn recv_until<T>(&mut self, what: &str, mut pick: impl FnMut(FromServer) -> Option<T>) -> T {
        let mut skipped = Vec::new();
        loop {
            match self.recv().await {
                Some(message) => {
                    let name = message.type_name();
                    match pick(message) {
                        Some(found) => return found,
                        None => skipped.push(name),
                    }
                }
                None => panic!(
                    "{}: the connection closed before {what} (skipped {skipped:?})",
                    self.host
                ),
            }
        }
    }

    /// Reads until the server closes the connection (frames before that are returned).
    pub async fn expect_closed(&mut self) -> Vec<FromServer> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv().await {
            frames.push(frame);
        }
        frames
    }

    /// Sends observations and returns the `up_to_seq` of the ack that answers them.
    pub async fn observe(&mut self, seqs: RangeInclusive<u64>, instance: &str) -> u64 {
        self.send(&observations(seqs, instance)).await;
        self.recv_until("an ack", |m| match m {
            FromServer::Ack(ack) => Some(ack.up_to_seq),
            _ => None,
        })
        .await
    }

    /// Closes the websocket properly (a close frame) and waits for the server's close.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }
}

/// The websocket settings of the agent link: frames up to the protocol's bound.
#[must_use]
pub fn ws_config() -> WebSocketConfig {
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(limits::MAX_FRAME_BYTES);
    ws_config.max_frame_size = Some(limits::MAX_FRAME_BYTES);
    ws_config
}

/// Opens an agent link to `url` (`wss://IP:PORT/v1/agent`) with these TLS and websocket
/// settings: TCP (no Nagle delay), TLS (the server named by its IP address), websocket upgrade,
/// each step within `timeout`.
///
/// # Errors
/// Which step failed, and why.
pub async fn dial(
    url: &str,
    config: Arc<rustls::ClientConfig>,
    ws_config: WebSocketConfig,
    timeout: Duration,
) -> Result<Ws, String> {
    let authority = url
        .strip_prefix("wss://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("not a wss URL: {url}"))?;
    let (ip, _) = authority.rsplit_once(':').ok_or_else(|| format!("no port in {url}"))?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(ip.to_owned()).map_err(|e| format!("server name {ip}: {e}"))?;
    let tls = tokio::time::timeout(timeout, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {e}"))?;
    let (ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config)),
    )
    .await
    .map_err(|_| "websocket upgrade timed out".to_owned())?
    .map_err(|e| format!("websocket: {e}"))?;
    Ok(ws)
}

/// A hello naming `host`, speaking `versions`, asking for `labels`.
pub fn hello(host: &str, versions: VersionRange, labels: BTreeMap<String, String>) -> FromAgent {
    FromAgent::Hello(Hello {
        versions,
        agent_version: "0.0.0-fake".to_owned(),
        host: HostName(host.to_owned()),
        labels,
        facts: endstate_agent_proto::Facts {
            hostname: format!("{host}.fake"),
            os: "Fake OS".to_owned(),
            kernel: "0.0".to_owned(),
            arch: "x86_64".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            disks: Vec::new(),
            agent_version: "0.0.0-fake".to_owned(),
        },
    })
}

/// A protocol message as a websocket text frame.
pub fn text(message: &FromAgent) -> WsMessage {
    WsMessage::text(String::from_utf8(encode(message).unwrap()).unwrap())
}
