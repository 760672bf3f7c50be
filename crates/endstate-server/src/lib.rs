//! The endstate API server: axum routes over the [`Store`], bearer-token authentication, per-client
//! rate limits, problem+json errors, the change runner, a live event stream, Prometheus metrics
//! and a generated OpenAPI document.
//!
//! # Tasks and channels
//! - The HTTP server (axum) serves [`Server::router`].
//! - The change runner ([`runner`]) is one task, woken by a [`tokio::sync::Notify`] whenever a
//!   revision is submitted and by a timer; every round re-reads the open changes from the store,
//!   so it keeps no state another replica could not rebuild, and resumes after a restart.
//! - Stream subscribers wait on a [`tokio::sync::watch`] counter bumped after every write to the
//!   timeline, then read the new events from the store: nothing is delivered that was not stored.

mod actions;
mod agents;
mod api_tls;
mod auth;
mod blueprint;
mod changes;
mod clock;
mod compose;
mod error;
mod extract;
mod fleet;
mod history;
mod hosts;
mod meta;
mod metrics;
mod monitor;
mod openapi;
mod options;
mod prometheus;
mod ratelimit;
mod record;
mod retention;
mod revisions;
mod rollout;
mod routes;
mod runner;
mod sources;
mod stream;
mod systems;
mod timeline;
mod tokens;
mod views;
mod why;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endstate_spec::DesiredState;
use endstate_store::{PageRequest, SqliteStore, Store, StoreError};
use endstate_types::RevisionId;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use agents::{AgentConfig, KEEPALIVE_MISSES, TlsError};
pub use clock::Clock;
pub use monitor::MonitorConfig;
pub use prometheus::PrometheusAuth;
pub use ratelimit::RateLimitConfig;
pub use retention::RetentionRule;
pub use rollout::{DEFAULT_EVACUATE_AFTER, DEFAULT_WAVE_DEADLINE, RolloutConfig};

/// How the server is set up. Built by the binary from flags and environment; everything is
/// validated before a socket is bound.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the SQLite database lives (`endstate.db` inside).
    pub data_dir: PathBuf,
    /// Per-client request rate limit.
    pub rate_limit: RateLimitConfig,
    /// How often the change runner looks at open changes when nothing wakes it.
    pub runner_interval: Duration,
    /// How many live streams may be open at once; more are refused with 503.
    pub max_streams: usize,
    /// The agent link (used when an agent listener is given).
    pub agents: AgentConfig,
    /// The rollout controller.
    pub rollout: RolloutConfig,
    /// Alerts and where they are sent.
    pub monitor: MonitorConfig,
    /// How long each kind of timeline event is kept (none: everything is kept).
    pub retention: Vec<RetentionRule>,
    /// How often retention is applied.
    pub retention_interval: Duration,
    /// CAs trusted besides the system's by every outgoing call: webhooks, tickets, Prometheus.
    pub trusted_cas: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// How the API is served: HTTPS by default.
    pub api_tls: ApiTls,
    /// The clock decisions read (the system's; a test's paused one).
    pub clock: Clock,
}

/// How the API listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiTls {
    /// HTTPS with a certificate the server's CA (`pki/ca.pem`, the agents' CA) issues at every
    /// start for `localhost`, the host name, the loopback addresses, the listener's address and
    /// these names or addresses. Clients pin that CA.
    BuiltIn {
        /// More DNS names or IP addresses clients reach the server by.
        names: Vec<String>,
    },
    /// HTTPS with the operator's certificate chain and key (PEM files), read again when they
    /// change, without a restart.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Plain HTTP: only on a loopback address (`--insecure-http`).
    Plain,
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            rate_limit: RateLimitConfig::default(),
            runner_interval: Duration::from_secs(2),
            max_streams: 256,
            agents: AgentConfig::default(),
            rollout: RolloutConfig::default(),
            monitor: MonitorConfig::default(),
            retention: Vec::new(),
            retention_interval: Duration::from_secs(600),
            trusted_cas: Vec::new(),
            api_tls: ApiTls::BuiltIn { names: Vec::new() },
            clock: Clock::system(),
        }
    }
}

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("cannot open the store in {path}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The first admin token cannot be created.
    #[error("cannot create the first admin token")]
    Bootstrap(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Serving failed.
    #[error("cannot set up the agent listener's TLS")]
    AgentTls(#[source] TlsError),
    /// The API's certificate cannot be issued or read.
    #[error("cannot set up the API's TLS")]
    ApiTls(#[source] TlsError),
    /// Plain HTTP was asked for on an address other hosts can reach.
    #[error(
        "plain HTTP is only served on a loopback address, not on {0}: serve HTTPS (the default) or listen on 127.0.0.1"
    )]
    PlainHttpNotLoopback(std::net::SocketAddr),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A server ready to serve: its store is open and its first token exists.
pub struct Server {
    state: AppState,
    admin_secret: Option<String>,
    runner_interval: Duration,
    retention: Vec<RetentionRule>,
    retention_interval: Duration,
    data_dir: PathBuf,
    agent_config: AgentConfig,
    agent_listener: Option<TcpListener>,
    api_tls: ApiTls,
}

/// The state every handler shares. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    clock: Clock,
    metrics: metrics::Metrics,
    limiter: ratelimit::RateLimiter,
    /// Wakes the change runner.
    runner_wake: Notify,
    /// Bumped after every write to the timeline; stream subscribers wait on it.
    appended: watch::Sender<u64>,
    /// Open live streams; each holds a permit, so their number (and the store reads they cause) is bounded.
    streams: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server shuts down, so long-lived streams end and graceful shutdown completes.
    stopping: watch::Sender<bool>,
    /// Parsed desired states by revision, so requests do not re-parse the same JSON.
    desired_cache: Mutex<BTreeMap<RevisionId, Arc<DesiredState>>>,
    /// What every instance should run now ([`blueprint::Current`]), for the hub and the views:
    /// placing every component again on every read would cost more than the rest of a view.
    /// The blueprint with the store's changes version it was read at.
    current_cache: Mutex<Option<(u64, Arc<blueprint::Current>)>>,
    /// Placement bases read back from stored plans, by (change, version of the change).
    basis_cache: Mutex<Vec<blueprint::CachedBasis>>,
    /// The revision in force and hosts in service a rebalance was last looked for on.
    proposals_seen: Mutex<Option<String>>,
    /// When a rebalance was last looked for (ms since the epoch): at most every few seconds.
    proposals_checked_ms: std::sync::atomic::AtomicI64,
    /// Since when each host's agent has been unreachable, as this server saw it go (ms since the
    /// epoch); a host the store says is unreachable and that is not here counts from
    /// `started_ms`, so a restarted server never evacuates a host for time it was not watching.
    unreachable_since: Mutex<BTreeMap<String, i64>>,
    /// When this server started (ms since the epoch).
    started_ms: i64,
    /// The placement of a revision with no change in force on the hosts in service, for the
    /// views before anything converged.
    placement_cache: Mutex<Option<Arc<views::Placed>>>,
    hub: std::sync::OnceLock<Arc<agents::Hub>>,
    rollout: RolloutConfig,
    /// Held by the controller's round and by a person's pause, resume or abort, so neither
    /// overwrites the other's progress.
    rollout_lock: tokio::sync::Mutex<()>,
    /// When the controller wants to look again (a min healthy time or a pause ends), in ms
    /// since the epoch; 0 for no wish.
    recheck_at_ms: std::sync::atomic::AtomicI64,
    /// Check results, alerts and their notifications.
    monitor: monitor::Monitor,
    /// Runs of actions.
    runs: actions::Runs,
    /// The Git sources followed.
    sources: sources::Sources,
    /// Every outgoing call's client (webhooks, tickets, Prometheus): the system's roots and
    /// `ServerConfig::trusted_cas`.
    http: reqwest::Client,
}

/// How many parsed desired states are kept.
const DESIRED_CACHE_LEN: usize = 8;

impl Server {
    /// Opens (or creates) the store in the data directory and makes sure an admin token exists.
    ///
    /// # Errors
    /// When the directory or the store cannot be opened, or the token cannot be written.
    pub async fn open(config: &ServerConfig) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let path = config.data_dir.join("endstate.db");
        let store = SqliteStore::open(&path).map_err(|source| ServerError::Store {
            path: path.clone(),
            source,
        })?;
        Server::with_store(Arc::new(store), config).await
    }

    /// A server over any store (tests use this with a store of their own).
    ///
    /// # Errors
    /// When the first admin token cannot be written.
    pub async fn with_store(store: Arc<dyn Store>, config: &ServerConfig) -> Result<Server, ServerError> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = http_client(&config.trusted_cas).map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        let mut monitor_config = config.monitor.clone();
        if monitor_config.webhook_secret.is_none() {
            monitor_config.webhook_secret = Some(webhook_secret(&config.data_dir)?);
        }
        let state = AppState(Arc::new(Inner {
            store,
            clock: config.clock.clone(),
            metrics: metrics::Metrics::new(),
            limiter: ratelimit::RateLimiter::new(config.rate_limit),
            runner_wake: Notify::new(),
            appended: watch::channel(0).0,
            stopping: watch::channel(false).0,
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            desired_cache: Mutex::new(BTreeMap::new()),
            current_cache: Mutex::new(None),
            proposals_seen: Mutex::new(None),
            proposals_checked_ms: std::sync::atomic::AtomicI64::new(0),
            unreachable_since: Mutex::new(BTreeMap::new()),
            started_ms: config.clock.now_ms(),
            basis_cache: Mutex::new(Vec::new()),
            placement_cache: Mutex::new(None),
            hub: std::sync::OnceLock::new(),
            rollout: config.rollout.clone(),
            rollout_lock: tokio::sync::Mutex::new(()),
            recheck_at_ms: std::sync::atomic::AtomicI64::new(0),
            monitor: monitor::Monitor::new(monitor_config, http.clone()),
            runs: actions::Runs::default(),
            sources: sources::Sources::new(
                &config.data_dir,
                config.trusted_cas.iter().map(|der| der.as_ref().to_vec()).collect(),
            ),
            http,
        }));
        let admin_secret = auth::bootstrap_admin(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        monitor::load_silences(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        monitor::load_alerts(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        monitor::resume_deliveries(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        actions::load_runs(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        sources::load(&state)
            .await
            .map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
        Ok(Server {
            state,
            admin_secret,
            runner_interval: config.runner_interval,
            retention: config.retention.clone(),
            retention_interval: config.retention_interval,
            data_dir: config.data_dir.clone(),
            agent_config: config.agents.clone(),
            agent_listener: None,
            api_tls: config.api_tls.clone(),
        })
    }

    /// Serves agents on `listener` (mutual TLS, see the `agents` module): loads or creates the
    /// CA in the data directory and issues the listener's certificate for its address.
    ///
    /// # Errors
    /// When the CA cannot be read or created, or TLS cannot be configured.
    pub fn with_agent_listener(mut self, listener: TcpListener) -> Result<Server, ServerError> {
        let addr = listener.local_addr().map_err(|source| {
            ServerError::AgentTls(TlsError::Io {
                op: "read the address of",
                path: PathBuf::from("the agent listener"),
                source,
            })
        })?;
        let mut names = vec!["localhost".to_owned()];
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            if !host.is_empty() && host != "localhost" {
                names.push(host.to_owned());
            }
        }
        let mut ips = vec![
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
        let tls = agents::tls::AgentTls::load_or_create(&self.data_dir, &names, &ips, clock::system_now_ms())
            .map_err(ServerError::AgentTls)?;
        let hub = Arc::new(agents::Hub::new(tls, self.agent_config.clone(), self.state.now_ms()));
        let url = self.agent_config.advertise_url.clone().unwrap_or_else(|| {
            let host = if addr.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                addr.ip().to_string()
            };
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            format!("wss://{host}:{}/v1/agent", addr.port())
        });
        hub.set_agent_url(url);
        let _ = self.state.0.hub.set(hub);
        self.agent_listener = Some(listener);
        Ok(self)
    }

    /// SHA-256 of the agents' CA certificate (hex), when there is an agent listener.
    pub fn agent_ca_sha256(&self) -> Option<String> {
        self.state.hub().map(|hub| hub.tls.ca_sha256.clone())
    }

    /// The CA that clients pin when the API serves the built-in certificate: its PEM and the
    /// SHA-256 of its DER (hex). Created on first use, in the data directory.
    ///
    /// # Errors
    /// When the CA cannot be read or created.
    pub fn api_ca(&self) -> Result<Option<(String, String)>, ServerError> {
        match self.api_tls {
            ApiTls::BuiltIn { .. } => {
                let (_, pem, _, sha256) = agents::tls::load_or_create_ca(&self.data_dir, clock::system_now_ms())
                    .map_err(ServerError::ApiTls)?;
                Ok(Some((pem, sha256)))
            }
            ApiTls::Files { .. } | ApiTls::Plain => Ok(None),
        }
    }

    /// The secret of the admin token created at this start, if this start created it. It is
    /// shown once: the store keeps only its hash.
    pub fn admin_secret(&self) -> Option<&str> {
        self.admin_secret.as_deref()
    }

    /// The whole HTTP application, for serving or for calling in-process (`tower::ServiceExt::oneshot`).
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serves the API on `listener` and runs the change runner until `shutdown` completes.
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        let tls = match &self.api_tls {
            ApiTls::Plain if !addr.ip().is_loopback() => return Err(ServerError::PlainHttpNotLoopback(addr)),
            ApiTls::Plain => None,
            ApiTls::BuiltIn { names } => Some(
                api_tls::ApiTlsConfig::built_in(&self.data_dir, addr, names, clock::system_now_ms())
                    .map_err(ServerError::ApiTls)?,
            ),
            ApiTls::Files { cert, key } => Some(api_tls::ApiTlsConfig::files(cert, key).map_err(ServerError::ApiTls)?),
        };
        let stopping = self.state.0.stopping.subscribe();
        let runner = tokio::spawn(runner::run(self.state.clone(), self.runner_interval, stopping));
        let sources = tokio::spawn(sources::run(self.state.clone(), self.state.0.stopping.subscribe()));
        let retention = tokio::spawn(retention::run(
            self.state.clone(),
            self.retention.clone(),
            self.retention_interval,
            self.state.0.stopping.subscribe(),
        ));
        let mut agent_tasks = Vec::new();
        if let (Some(listener), Some(hub)) = (self.agent_listener.take(), self.state.hub().cloned()) {
            let stop = self.state.0.stopping.subscribe();
            agent_tasks.push(tokio::spawn(agents::conn::serve(
                self.state.clone(),
                Arc::clone(&hub),
                listener,
                stop,
            )));
            let stop = self.state.0.stopping.subscribe();
            agent_tasks.push(tokio::spawn(agents_tick(self.state.clone(), hub, stop)));
        }
        let app = self.router();
        let state = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            // Ends the runner and every open stream, so the graceful shutdown does not wait on them.
            state.0.stopping.send_replace(true);
        };
        let make = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let result = match tls {
            None => axum::serve(listener, make).with_graceful_shutdown(shutdown).await,
            Some(tls) => {
                use axum::serve::ListenerExt;
                match api_tls::TlsListener::start(listener, &tls, self.state.0.stopping.subscribe()) {
                    Ok(listener) => {
                        axum::serve(listener.tap_io(|_| {}), make)
                            .with_graceful_shutdown(shutdown)
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
        }
        .map_err(ServerError::Serve);
        self.state.0.stopping.send_replace(true);
        let _ = runner.await;
        let _ = sources.await;
        let _ = retention.await;
        for task in agent_tasks {
            let _ = task.await;
        }
        result
    }
}

/// Keeps the agents' desired sets current (every half keepalive interval) and notices silent
/// agents (every quarter interval).
async fn agents_tick(state: AppState, hub: Arc<agents::Hub>, mut stop: watch::Receiver<bool>) {
    let period = hub.config.keepalive_interval / 4;
    let mut round: u64 = 0;
    loop {
        if round.is_multiple_of(2)
            && let Err(error) = hub.refresh(&state).await
        {
            tracing::warn!(error = %chain(&error), "Agent refresh failed; retrying.");
        }
        round += 1;
        if let Err(error) = hub.sweep(&state).await {
            tracing::warn!(error = %chain(&error), "Agent liveness sweep failed; retrying.");
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Replaces a lost admin token while the server is stopped: every admin token named `admin` is
/// revoked, a new one is created and its secret returned (shown once), and the replacement is
/// on the timeline (`token.admin_reset`) when the server starts again.
///
/// # Errors
/// When the store cannot be opened or written.
pub async fn reset_admin_token(data_dir: &std::path::Path) -> Result<String, ServerError> {
    let path = data_dir.join("endstate.db");
    if !path.exists() {
        return Err(ServerError::Store {
            path,
            source: StoreError::Invalid {
                what: "data directory",
                reason: "no store here: nothing to reset (a first start creates the admin token)".to_owned(),
            },
        });
    }
    let store = SqliteStore::open(&path).map_err(|source| ServerError::Store {
        path: path.clone(),
        source,
    })?;
    let failed = |source| ServerError::Store {
        path: path.clone(),
        source,
    };
    let mut revoked = 0;
    for token in store.list_tokens().await.map_err(failed)? {
        if token.name == "admin" && !token.revoked {
            store
                .put_token(endstate_store::TokenRecord { revoked: true, ..token })
                .await
                .map_err(failed)?;
            revoked += 1;
        }
    }
    let secret = auth::new_secret().map_err(|error| ServerError::Bootstrap(Box::new(error)))?;
    store
        .put_token(endstate_store::TokenRecord {
            id: auth::hash_secret(&secret)[..16].to_string(),
            name: "admin".to_string(),
            role: "admin".to_string(),
            hash_hex: auth::hash_secret(&secret),
            created_ms: clock::system_now_ms(),
            revoked: false,
            systems: Vec::new(),
        })
        .await
        .map_err(failed)?;
    store
        .append_events(vec![endstate_store::NewEvent {
            actor: Some("endstate server admin-token (offline)".into()),
            ..endstate_store::NewEvent::of(
                clock::system_now_ms(),
                &endstate_events::Event::TokenAdminReset(endstate_events::AdminReset {
                    revoked: u64::try_from(revoked).unwrap_or(u64::MAX),
                }),
                format!("admin token replaced offline; {revoked} previous admin token(s) revoked"),
            )
        }])
        .await
        .map_err(failed)?;
    store.close().await;
    Ok(secret)
}

/// The secret webhook and ticket calls are signed with when the operator gives none: 32 random
/// bytes (hex) in `data_dir/webhook-secret`, mode 0600, made at the first start. Receivers read it
/// from there (it never appears in a log, the store or the timeline).
fn webhook_secret(data_dir: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("webhook-secret");
    let failed = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| ServerError::Bootstrap(Box::new(std::io::Error::other(error.to_string()))))?;
    let secret = auth::hex(&bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    file.write_all(secret.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(secret.into_bytes())
}

/// The server's outgoing HTTP(S) client: rustls (aws-lc-rs), the system's roots plus `trusted`,
/// no proxy from the environment. Each call sets its own timeout.
fn http_client(trusted: &[rustls_pki_types::CertificateDer<'static>]) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge(
            trusted
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok()),
        )
        .build()
}

impl AppState {
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    pub(crate) fn hub(&self) -> Option<&Arc<agents::Hub>> {
        self.0.hub.get()
    }

    /// The agents as the controller reaches them ([`fleet::Fleet`]).
    pub(crate) fn fleet(&self) -> Option<Arc<dyn fleet::Fleet>> {
        self.0.hub.get().map(|hub| Arc::clone(hub) as Arc<dyn fleet::Fleet>)
    }

    /// The time in milliseconds since the Unix epoch, from the server's [`Clock`].
    pub(crate) fn now_ms(&self) -> i64 {
        self.0.clock.now_ms()
    }

    pub(crate) fn rollout_config(&self) -> &RolloutConfig {
        &self.0.rollout
    }

    pub(crate) fn monitor(&self) -> &monitor::Monitor {
        &self.0.monitor
    }

    pub(crate) fn sources(&self) -> &sources::Sources {
        &self.0.sources
    }

    pub(crate) fn runs(&self) -> &actions::Runs {
        &self.0.runs
    }

    /// Asks the runner to look again at `at` (ms since the epoch), or forgets the wish.
    pub(crate) fn recheck_at(&self, at: Option<i64>) {
        self.0
            .recheck_at_ms
            .store(at.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the runner may sleep at most: until the controller's recheck time, if sooner.
    pub(crate) fn runner_sleep(&self, interval: std::time::Duration) -> std::time::Duration {
        let at = self.0.recheck_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        let left = at.saturating_sub(self.now_ms());
        if at <= 0 || left < 0 {
            // No wish, or it passed (the round that ran since decided anew).
            return interval;
        }
        // A few milliseconds late rather than early, so the time has really passed.
        let left = u64::try_from(left).unwrap_or(0).saturating_add(5);
        interval.min(std::time::Duration::from_millis(left))
    }

    pub(crate) fn rollout_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.0.rollout_lock
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }

    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    pub(crate) fn limiter(&self) -> &ratelimit::RateLimiter {
        &self.0.limiter
    }

    /// Wakes the change runner and the stream subscribers after a write.
    pub(crate) fn written(&self) {
        self.0.runner_wake.notify_one();
        self.0.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The parsed desired state of a revision.
    pub(crate) async fn desired(&self, id: RevisionId) -> Result<Option<Arc<DesiredState>>, error::ApiError> {
        if let Some(found) = self.cache().get(&id) {
            return Ok(Some(found.clone()));
        }
        let Some(revision) = self.store().get_revision(id).await? else {
            return Ok(None);
        };
        let desired: DesiredState = serde_json::from_value(revision.desired).map_err(|error| {
            error::ApiError::Internal(format!("revision {id} holds an unreadable desired state: {error}"))
        })?;
        let desired = Arc::new(desired);
        let mut cache = self.cache();
        if cache.len() >= DESIRED_CACHE_LEN
            && let Some(oldest) = cache.keys().next().copied()
        {
            cache.remove(&oldest);
        }
        cache.insert(id, desired.clone());
        Ok(Some(desired))
    }

    /// The desired state of the latest revision, with its id.
    pub(crate) async fn latest_desired(&self) -> Result<Option<(RevisionId, Arc<DesiredState>)>, error::ApiError> {
        // The newest revision's id only: its desired state comes from the cache (parsing a large
        // desired state on every read would cost more than everything else a view does).
        let newest = self
            .store()
            .list_revisions(PageRequest { before: None, limit: 1 })
            .await?;
        let Some(revision) = newest.items.first() else {
            return Ok(None);
        };
        Ok(self.desired(revision.id).await?.map(|desired| (revision.id, desired)))
    }

    /// The base every plan starts from: the last revision whose change converged (what is really
    /// in force), with its desired state. `None` while no change has converged.
    pub(crate) async fn base(&self) -> Result<Option<(RevisionId, Arc<DesiredState>)>, error::ApiError> {
        match self.converged_change().await? {
            Some(change) => Ok(self
                .desired(change.revision)
                .await?
                .map(|desired| (change.revision, desired))),
            None => Ok(None),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<RevisionId, Arc<DesiredState>>> {
        self.0
            .desired_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// RFC 3339 text of a millisecond timestamp.
pub(crate) fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// An error with all its sources, for logs: `a: b: c`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}
