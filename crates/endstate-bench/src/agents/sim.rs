//! Simulated agents: one process holds N real agent connections (TCP, TLS with the agent's own
//! client certificate, websocket, the protocol's JSON frames), each enrolled through the join
//! token API like a real agent, and each behaving like one: `hello`, wait for `welcome`,
//! `actual_state`, wait for `desired_instances`, then a keepalive per interval; on a lost
//! connection, reconnect with the real agent's jittered backoff (0.5 s doubling to 10 s, ±50%).
//!
//! On top of that, each agent obeys commands of the benchmark: flood keepalives, stream
//! observations and wait for their acks, or fall silent while keeping its socket open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use endstate_agent_proto::{
    ActualState, FromAgent, FromServer, HealthResult, InstanceId, InstanceStateChange, InstanceStateWord, Keepalive,
    Logs, Observation, Observations, Observed, SUPPORTED_VERSIONS, decode_from_server, encode,
};
use endstate_types::Generation;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) type Ws = endstate_testkit::agent::Ws;
type Sink = SplitSink<Ws, WsMessage>;
type Stream = SplitStream<Ws>;

/// A simulated agent's identity: its host name and a TLS client configuration with its
/// certificate (signed by the server's CA at enrolment) and its own key.
pub(crate) struct Identity {
    pub(crate) host: String,
    tls: Arc<rustls::ClientConfig>,
}

/// Enrols `hosts` with the server at `http`: a one-time join token each (admin API), then
/// `POST /v1/agents/enrol` with a CSR of a fresh P-256 key, `concurrency` at a time.
pub(crate) async fn enrol(
    http: &str,
    admin: &str,
    hosts: Vec<String>,
    labels: BTreeMap<String, String>,
    concurrency: usize,
) -> anyhow::Result<Vec<Identity>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let roots: Arc<OnceLock<Arc<rustls::RootCertStore>>> = Arc::new(OnceLock::new());
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for (idx, host) in hosts.into_iter().enumerate() {
        let (client, roots, gate, labels) = (client.clone(), Arc::clone(&roots), Arc::clone(&gate), labels.clone());
        let (http, admin) = (http.to_owned(), admin.to_owned());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let token: endstate_api::CreatedJoinToken = checked(
                client
                    .post(format!("{http}/v1/join-tokens"))
                    .bearer_auth(&admin)
                    .json(&endstate_api::CreateJoinToken {
                        ttl: Some("1h".into()),
                        labels,
                        host: Some(host.clone()),
                    })
                    .send()
                    .await?,
            )
            .await?
            .json()
            .await?;
            let key = endstate_pki::AgentKey::generate()?;
            let csr_pem = key.csr(&host)?;
            let enrolled: endstate_api::EnrolResponse = checked(
                client
                    .post(format!("{http}/v1/agents/enrol"))
                    .json(&endstate_api::EnrolRequest {
                        join_token: token.secret,
                        host: host.clone(),
                        csr_pem,
                        labels: BTreeMap::new(),
                    })
                    .send()
                    .await?,
            )
            .await?
            .json()
            .await?;
            let roots = match roots.get() {
                Some(roots) => Arc::clone(roots),
                None => {
                    let mut store = rustls::RootCertStore::empty();
                    store.add(CertificateDer::from_pem_slice(enrolled.ca_pem.as_bytes())?)?;
                    Arc::clone(roots.get_or_init(|| Arc::new(store)))
                }
            };
            let chain = vec![CertificateDer::from_pem_slice(enrolled.cert_pem.as_bytes())?];
            let key = PrivateKeyDer::from_pem_slice(key.to_pem().as_bytes())?;
            let mut tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
            // Like the real agent, which builds its configuration anew for every connection.
            tls.resumption = rustls::client::Resumption::disabled();
            anyhow::Ok((
                idx,
                Identity {
                    host: enrolled.host,
                    tls: Arc::new(tls),
                },
            ))
        });
    }
    let mut identities: Vec<Option<Identity>> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (idx, identity) = joined??;
        if identities.len() <= idx {
            identities.resize_with(idx + 1, || None);
        }
        identities[idx] = Some(identity);
    }
    identities
        .into_iter()
        .map(|i| i.ok_or_else(|| anyhow::anyhow!("an identity is missing")))
        .collect()
}

async fn checked(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{status}: {}", body.chars().take(300).collect::<String>())
}

/// What the benchmark asks of one connected agent.
pub(crate) enum Command {
    /// Send keepalives as fast as the connection takes them until `until`, then `actual_state`
    /// and wait for the `desired_instances` it causes: the server reads a connection in order,
    /// so every keepalive before it was processed. Answers the number of keepalives sent.
    Flood {
        until: Instant,
        /// One keepalive per period (from a random phase) instead of as fast as possible.
        period: Option<Duration>,
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Send batches of `batch` observations until `until`, each after the `ack` of the previous one.
    Ingest {
        until: Instant,
        batch: usize,
        done: oneshot::Sender<Result<IngestStats, String>>,
    },
    /// Send one keepalive now, then nothing (the socket stays open and is read); answers the
    /// moment of that last keepalive.
    Silence { done: oneshot::Sender<Instant> },
    /// Run `per_agent` checks every `period` (from a random phase) until `until`, as the real
    /// agent streams results: one `observations` frame per period with a result of each check
    /// (`bench/c0` .. on the agent's host), not waiting for acks; keepalives go on meanwhile.
    /// Check `bench/c0` fails three periods in six (its phase set by the agent's index, its
    /// cycle kept across commands), so its alert opens at the second failure in a row and
    /// resolves at the next success: the moment each second failure was sent is put in
    /// `hardened` under the agent's host, for the benchmark to match with `alert.opened`.
    Checks {
        until: Instant,
        per_agent: usize,
        period: Duration,
        hardened: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
        done: oneshot::Sender<Result<ChecksStats, String>>,
    },
}

/// What one agent's checks did.
#[derive(Default)]
pub(crate) struct ChecksStats {
    /// Results sent.
    pub(crate) sent: u64,
    /// Results acknowledged (stored) by the server.
    pub(crate) acked: u64,
    /// Per frame, from sending it to the `ack` that covered it.
    pub(crate) latencies: Vec<Duration>,
}

/// What one agent's ingest did.
#[derive(Default)]
pub(crate) struct IngestStats {
    pub(crate) observations: u64,
    pub(crate) bytes: u64,
    /// Per batch, from sending it to its `ack` (committed, hence queryable).
    pub(crate) latencies: Vec<Duration>,
}

/// The state of one agent as the benchmark sees it.
#[derive(Default)]
pub(crate) struct Status {
    /// When it last completed a resync (`desired_instances` after `actual_state`), in ns after
    /// the fleet's start; 0 before the first.
    resynced_ns: AtomicU64,
    /// When it last received a `welcome`, likewise.
    welcomed_ns: AtomicU64,
    connected: AtomicBool,
}

struct Shared {
    base: Instant,
    url: String,
    keepalive: Duration,
    status: Vec<Status>,
    /// Bounds the first connections of the fleet (a ramp); reconnections are not bounded.
    gate: Semaphore,
    welcomes: AtomicU64,
    lost: AtomicU64,
    last_errors: Mutex<Vec<String>>,
}

/// N simulated agents, each a task holding one connection (or waiting to reconnect).
pub(crate) struct Fleet {
    shared: Arc<Shared>,
    controls: Vec<mpsc::Sender<Command>>,
    hosts: Vec<String>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts every agent; the first connections are made `ramp` at a time.
    pub(crate) fn start(identities: Vec<Identity>, addr: SocketAddr, keepalive: Duration, ramp: usize) -> Fleet {
        let shared = Arc::new(Shared {
            base: Instant::now(),
            url: format!("wss://{addr}/v1/agent"),
            keepalive,
            status: (0..identities.len()).map(|_| Status::default()).collect(),
            gate: Semaphore::new(ramp),
            welcomes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            last_errors: Mutex::new(Vec::new()),
        });
        let mut controls = Vec::with_capacity(identities.len());
        let mut hosts = Vec::with_capacity(identities.len());
        let mut tasks = JoinSet::new();
        for (idx, identity) in identities.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(1);
            controls.push(tx);
            hosts.push(identity.host.clone());
            tasks.spawn(agent(idx, identity, Arc::clone(&shared), rx));
        }
        Fleet {
            shared,
            controls,
            hosts,
            tasks,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.controls.len()
    }

    pub(crate) fn host(&self, idx: usize) -> &str {
        &self.hosts[idx]
    }

    /// Now, on the fleet's clock (ns after its start).
    pub(crate) fn now_ns(&self) -> u64 {
        ns_since(self.shared.base)
    }

    /// Waits until every agent completed a resync after `after_ns`; returns how long the wait took.
    pub(crate) async fn wait_resynced(&self, after_ns: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let done = self.resynced_after(after_ns).len();
            if done == self.len() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "{done} of {} agents resynced within {timeout:?}; last errors: {}",
                    self.len(),
                    self.last_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The resync times (ns on the fleet's clock) of the agents that resynced after `after_ns`.
    pub(crate) fn resynced_after(&self, after_ns: u64) -> Vec<u64> {
        self.shared
            .status
            .iter()
            .map(|s| s.resynced_ns.load(Ordering::Relaxed))
            .filter(|t| *t > after_ns)
            .collect()
    }

    /// The welcome times (ns on the fleet's clock) of the agents welcomed after `after_ns`.
    pub(crate) fn welcomed_after(&self, after_ns: u64) -> Vec<u64> {
        self.shared
            .status
            .iter()
            .map(|s| s.welcomed_ns.load(Ordering::Relaxed))
            .filter(|t| *t > after_ns)
            .collect()
    }

    pub(crate) fn connected(&self) -> usize {
        self.shared
            .status
            .iter()
            .filter(|s| s.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Welcomes received and connections lost since the start.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (
            self.shared.welcomes.load(Ordering::Relaxed),
            self.shared.lost.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn last_errors(&self) -> String {
        let errors = lock(&self.shared.last_errors);
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join("; ")
        }
    }

    /// Sends a command to agent `idx`.
    pub(crate) async fn command(&self, idx: usize, command: Command) -> anyhow::Result<()> {
        self.controls[idx]
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("agent {idx} stopped"))
    }

    /// Ends every agent (their connections close).
    pub(crate) async fn stop(mut self) {
        self.controls.clear();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn ns_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a connection ended.
enum Ended {
    Lost(String),
    /// The benchmark dropped the agent's control channel.
    Stop,
}

/// What an agent remembers across its connections (like the real agent's data directory).
struct Memory {
    idx: usize,
    next_seq: u64,
    generation: Option<Generation>,
    rng: u64,
    /// Periods of checks run so far (see [`Command::Checks`]).
    check_cycle: u64,
}

async fn agent(idx: usize, identity: Identity, shared: Arc<Shared>, mut control: mpsc::Receiver<Command>) {
    let mut memory = Memory {
        idx,
        next_seq: 1,
        generation: None,
        rng: 0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        check_cycle: 0,
    };
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let started = Instant::now();
        let permit = if first { shared.gate.acquire().await.ok() } else { None };
        first = false;
        let ended = session(&identity, &shared, &mut memory, &mut control, permit).await;
        shared.status[idx].connected.store(false, Ordering::Relaxed);
        match ended {
            Ended::Stop => return,
            Ended::Lost(reason) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                let mut errors = lock(&shared.last_errors);
                if errors.len() >= 5 {
                    errors.remove(0);
                }
                errors.push(format!("{}: {reason}", identity.host));
            }
        }
        // As the real agent: a connection that lasted resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures, &mut memory.rng)).await;
    }
}

/// The real agent's backoff: 0.5 s doubling to 10 s, ±50% jitter.
fn backoff(failures: u32, rng: &mut u64) -> Duration {
    let base = (500u64 << failures.saturating_sub(1).min(5)).min(10_000);
    Duration::from_millis(base / 2 + next_random(rng) % base)
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The agent link's websocket settings with a small read buffer, since one process holds
/// thousands of connections (tungstenite's default is 128 KiB each, zero-filled).
fn ws_config() -> WebSocketConfig {
    endstate_testkit::agent::ws_config().read_buffer_size(4096)
}

/// Opens an agent's connection to the agent listener at `addr`: TCP, TLS with the agent's
/// certificate, websocket, as [`session`] does; for benchmarks that speak the protocol themselves.
pub(crate) async fn connect(identity: &Identity, addr: SocketAddr) -> anyhow::Result<Ws> {
    open(identity, &format!("wss://{addr}/v1/agent"))
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", identity.host))
}

/// The test kit's fake agent's way of opening a link (one way for tests and benchmarks).
async fn open(identity: &Identity, url: &str) -> Result<Ws, String> {
    endstate_testkit::agent::dial(url, Arc::clone(&identity.tls), ws_config(), Duration::from_secs(10)).await
}

/// The `hello` of a simulated agent of `host`: the test kit's fake agent's.
pub(crate) fn hello(host: &str) -> FromAgent {
    endstate_testkit::agent::hello(host, SUPPORTED_VERSIONS, BTreeMap::new())
}

async fn session(
    identity: &Identity,
    shared: &Shared,
    memory: &mut Memory,
    control: &mut mpsc::Receiver<Command>,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> Ended {
    let ws = match open(identity, &shared.url).await {
        Ok(ws) => ws,
        Err(error) => return Ended::Lost(error),
    };
    let (mut sink, mut stream) = ws.split();
    if let Err(ended) = send(&mut sink, &hello(&identity.host)).await {
        return ended;
    }
    match next_message(&mut stream).await {
        Ok(FromServer::Welcome(_)) => {}
        Ok(FromServer::Refused(refused)) => return Ended::Lost(format!("refused: {}", refused.reason)),
        Ok(other) => return Ended::Lost(format!("expected welcome, got {}", other.type_name())),
        Err(ended) => return ended,
    }
    shared.welcomes.fetch_add(1, Ordering::Relaxed);
    shared.status[memory.idx]
        .welcomed_ns
        .store(ns_since(shared.base), Ordering::Relaxed);
    shared.status[memory.idx].connected.store(true, Ordering::Relaxed);
    if let Err(ended) = resync(&mut sink, &mut stream, memory).await {
        return ended;
    }
    shared.status[memory.idx]
        .resynced_ns
        .store(ns_since(shared.base), Ordering::Relaxed);
    drop(permit);

    // Steady state: a keepalive per interval, starting at a random phase.
    let phase = Duration::from_nanos(next_random(&mut memory.rng) % shared.keepalive.as_nanos().max(1) as u64);
    let mut keepalive = tokio::time::interval_at(Instant::now() + phase, shared.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ka_seq = 0;
    let mut silent = false;
    loop {
        tokio::select! {
            frame = stream.next() => {
                let message = match read_frame(frame) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(ended) => return ended,
                };
                if let Err(ended) = answer(&mut sink, memory, message, &mut ka_seq, silent).await {
                    return ended;
                }
            }
            _ = keepalive.tick(), if !silent => {
                ka_seq += 1;
                if let Err(ended) = send(&mut sink, &FromAgent::Keepalive(Keepalive { seq: ka_seq })).await {
                    return ended;
                }
            }
            command = control.recv() => {
                let Some(command) = command else { return Ended::Stop };
                match command {
                    Command::Flood { until, period, done } => {
                        let result = flood(&mut sink, &mut stream, memory, until, period, &mut ka_seq).await;
                        let failed = result.as_ref().err().map(|e| e.to_string());
                        let _ = done.send(result.map_err(|e| e.to_string()));
                        if let Some(error) = failed {
                            return Ended::Lost(error);
                        }
                    }
                    Command::Ingest { until, batch, done } => {
                        let result = ingest(&mut sink, &mut stream, memory, until, batch, &mut ka_seq).await;
                        let failed = result.as_ref().err().map(|e| e.to_string());
                        let _ = done.send(result.map_err(|e| e.to_string()));
                        if let Some(error) = failed {
                            return Ended::Lost(error);
                        }
                    }
                    Command::Checks { until, per_agent, period, hardened, done } => {
                        let host = identity.host.as_str();
                        let plan = ChecksPlan { host, until, per_agent, period, keepalive: shared.keepalive, hardened: &hardened };
                        let result = checks(&mut sink, &mut stream, memory, &plan, &mut ka_seq).await;
                        let failed = result.as_ref().err().map(|e| e.to_string());
                        let _ = done.send(result.map_err(|e| e.to_string()));
                        if let Some(error) = failed {
                            return Ended::Lost(error);
                        }
                    }
                    Command::Silence { done } => {
                        ka_seq += 1;
                        if let Err(ended) = send(&mut sink, &FromAgent::Keepalive(Keepalive { seq: ka_seq })).await {
                            return ended;
                        }
                        silent = true;
                        let _ = done.send(Instant::now());
                    }
                }
            }
        }
    }
}

/// `actual_state` (no instances, the last seq and generation), then wait for `desired_instances`.
async fn resync(sink: &mut Sink, stream: &mut Stream, memory: &mut Memory) -> Result<(), Ended> {
    let actual = FromAgent::ActualState(ActualState {
        generation: memory.generation,
        last_seq: memory.next_seq - 1,
        instances: Vec::new(),
    });
    send(sink, &actual).await?;
    let mut ka_seq = 0;
    loop {
        match next_message(stream).await? {
            FromServer::DesiredInstances(desired) => {
                memory.generation = Some(desired.generation);
                return Ok(());
            }
            other => answer(sink, memory, other, &mut ka_seq, false).await?,
        }
    }
}

/// Answers what the server sent in steady state.
async fn answer(
    sink: &mut Sink,
    memory: &mut Memory,
    message: FromServer,
    ka_seq: &mut u64,
    silent: bool,
) -> Result<(), Ended> {
    match message {
        FromServer::DesiredInstances(desired) => memory.generation = Some(desired.generation),
        FromServer::Ping(_) if !silent => {
            *ka_seq += 1;
            send(sink, &FromAgent::Keepalive(Keepalive { seq: *ka_seq })).await?;
        }
        FromServer::LogsRequest(request) => {
            let logs = FromAgent::Logs(Logs {
                request: request.request,
                instance: request.instance,
                found: false,
                stdout: String::new(),
                stderr: String::new(),
                stdout_total: 0,
                stderr_total: 0,
            });
            send(sink, &logs).await?;
        }
        // An action "runs" at once and succeeds: its result goes as the real agent's does, an
        // `action` observation (acknowledged later, like any other).
        FromServer::RunAction(request) => {
            let seq = memory.next_seq;
            memory.next_seq += 1;
            let at_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
            let result = FromAgent::Observations(Observations {
                observations: vec![Observation {
                    seq,
                    at_unix_ms,
                    observed: Observed::Action(endstate_agent_proto::ActionResult {
                        run: request.run,
                        action: request.action,
                        outcome: endstate_agent_proto::ActionOutcome::Succeeded,
                        exit_code: Some(0),
                        signal: None,
                        duration_ms: 0,
                        output: String::new(),
                        detail: String::new(),
                    }),
                }],
            });
            send(sink, &result).await?;
        }
        FromServer::Revoke(revoke) => return Err(Ended::Lost(format!("revoked: {}", revoke.reason))),
        FromServer::Refused(refused) => return Err(Ended::Lost(format!("refused: {}", refused.reason))),
        _ => {}
    }
    Ok(())
}

async fn flood(
    sink: &mut Sink,
    stream: &mut Stream,
    memory: &mut Memory,
    until: Instant,
    period: Option<Duration>,
    ka_seq: &mut u64,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    match period {
        None => {
            while Instant::now() < until {
                for _ in 0..16 {
                    *ka_seq += 1;
                    send(sink, &FromAgent::Keepalive(Keepalive { seq: *ka_seq }))
                        .await
                        .map_err(ended_error)?;
                    sent += 1;
                }
                // Let the fleet's other agents run: a send to a writable socket does not yield,
                // so without this the first agents to flood took the load generator's cores
                // and the last ones sent nothing, not even their keepalives, for longer than
                // the server's keepalive timeout (it then rightly closed them).
                tokio::task::yield_now().await;
            }
        }
        Some(period) => {
            let phase = Duration::from_nanos(next_random(&mut memory.rng) % period.as_nanos().max(1) as u64);
            let mut ticks = tokio::time::interval_at(Instant::now() + phase, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let tick = ticks.tick().await;
                if tick >= until {
                    break;
                }
                *ka_seq += 1;
                send(sink, &FromAgent::Keepalive(Keepalive { seq: *ka_seq }))
                    .await
                    .map_err(ended_error)?;
                sent += 1;
            }
        }
    }
    resync(sink, stream, memory).await.map_err(ended_error)?;
    Ok(sent)
}

async fn ingest(
    sink: &mut Sink,
    stream: &mut Stream,
    memory: &mut Memory,
    until: Instant,
    batch: usize,
    ka_seq: &mut u64,
) -> anyhow::Result<IngestStats> {
    let mut stats = IngestStats::default();
    while Instant::now() < until {
        let first = memory.next_seq;
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let observations = (0..batch as u64)
            .map(|i| Observation {
                seq: first + i,
                at_unix_ms,
                observed: observation(first + i),
            })
            .collect();
        memory.next_seq += batch as u64;
        let last = memory.next_seq - 1;
        let frame = FromAgent::Observations(Observations { observations });
        let sent = Instant::now();
        stats.bytes += send(sink, &frame).await.map_err(ended_error)? as u64;
        loop {
            match next_message(stream).await.map_err(ended_error)? {
                FromServer::Ack(ack) if ack.up_to_seq >= last => break,
                FromServer::Ack(_) => {}
                other => answer(sink, memory, other, ka_seq, false).await.map_err(ended_error)?,
            }
        }
        stats.latencies.push(sent.elapsed());
        stats.observations += batch as u64;
    }
    Ok(stats)
}

/// What [`checks`] runs.
struct ChecksPlan<'a> {
    host: &'a str,
    until: Instant,
    per_agent: usize,
    period: Duration,
    keepalive: Duration,
    hardened: &'a Mutex<std::collections::HashMap<String, Instant>>,
}

/// Periods in a cycle of `bench/c0`: ok for the first half, critical for the second.
const CHECK_CYCLE: u64 = 6;

async fn checks(
    sink: &mut Sink,
    stream: &mut Stream,
    memory: &mut Memory,
    plan: &ChecksPlan<'_>,
    ka_seq: &mut u64,
) -> anyhow::Result<ChecksStats> {
    let mut stats = ChecksStats::default();
    // Frames sent and not yet acknowledged: (last seq, results, sent at).
    let mut pending: std::collections::VecDeque<(u64, u64, Instant)> = std::collections::VecDeque::new();
    let phase = Duration::from_nanos(next_random(&mut memory.rng) % plan.period.as_nanos().max(1) as u64);
    let mut ticks = tokio::time::interval_at(Instant::now() + phase, plan.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keepalive = tokio::time::interval(plan.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = true;
    // After the last period, wait at most this long for the acks still due.
    let drain = plan.until + Duration::from_secs(10);
    loop {
        if !sending && pending.is_empty() {
            break;
        }
        tokio::select! {
            tick = ticks.tick(), if sending => {
                if tick >= plan.until {
                    sending = false;
                    continue;
                }
                let cycle = memory.check_cycle;
                memory.check_cycle += 1;
                let position = (cycle + memory.idx as u64) % CHECK_CYCLE;
                let failing = position >= CHECK_CYCLE / 2;
                let at_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
                let first = memory.next_seq;
                let observations: Vec<Observation> = (0..plan.per_agent)
                    .map(|j| {
                        let critical = j == 0 && failing;
                        Observation {
                            seq: first + j as u64,
                            at_unix_ms,
                            observed: Observed::Check(endstate_agent_proto::CheckResult {
                                name: format!("bench/c{j}"),
                                target: String::new(),
                                duration_ms: 3,
                                status: if critical { 2 } else { 0 },
                                output: if critical {
                                    "PROCS CRITICAL: 0 processes with args 'bench'".to_owned()
                                } else {
                                    "PROCS OK: 1 process with args 'bench'".to_owned()
                                },
                                perfdata: format!("procs={};;1:1;0;", u8::from(!critical)),
                            }),
                        }
                    })
                    .collect();
                memory.next_seq += plan.per_agent as u64;
                let frame = FromAgent::Observations(Observations { observations });
                let sent = Instant::now();
                // The second failure in a row (never the first period of a run: the one before
                // it may not have been a failure the server saw).
                if failing && position == CHECK_CYCLE / 2 + 1 && cycle > 0 {
                    lock(plan.hardened).insert(plan.host.to_owned(), sent);
                }
                send(sink, &frame).await.map_err(ended_error)?;
                pending.push_back((memory.next_seq - 1, plan.per_agent as u64, sent));
                stats.sent += plan.per_agent as u64;
            }
            _ = keepalive.tick() => {
                *ka_seq += 1;
                send(sink, &FromAgent::Keepalive(Keepalive { seq: *ka_seq })).await.map_err(ended_error)?;
            }
            _ = tokio::time::sleep_until(drain), if !sending => {
                break;
            }
            frame = stream.next() => {
                let message = match read_frame(frame).map_err(ended_error)? {
                    Some(message) => message,
                    None => continue,
                };
                match message {
                    FromServer::Ack(ack) => {
                        while let Some((last, n, at)) = pending.front().copied() {
                            if last > ack.up_to_seq {
                                break;
                            }
                            pending.pop_front();
                            stats.acked += n;
                            stats.latencies.push(at.elapsed());
                        }
                    }
                    other => answer(sink, memory, other, ka_seq, false).await.map_err(ended_error)?,
                }
            }
        }
    }
    Ok(stats)
}

/// Observation `seq`: alternately an instance state (running) and a passing health probe, over
/// 16 instances of a component the store does not know (so each is stored as a timeline event).
fn observation(seq: u64) -> Observed {
    let instance = InstanceId(format!("bench/web#{}", seq % 16));
    if seq.is_multiple_of(2) {
        Observed::InstanceState(InstanceStateChange {
            instance,
            generation: Generation(1),
            state: InstanceStateWord::Running,
            version: "1.4.2".to_owned(),
            pid: Some(40_000 + (seq % 16) as u32),
            exit_code: None,
            signal: None,
            restarts: 0,
            detail: String::new(),
        })
    } else {
        Observed::Health(HealthResult {
            instance,
            healthy: true,
            detail: "GET http://127.0.0.1:20001/health: 200 OK in 2 ms".to_owned(),
        })
    }
}

fn ended_error(ended: Ended) -> anyhow::Error {
    match ended {
        Ended::Lost(reason) => anyhow::anyhow!("connection lost: {reason}"),
        Ended::Stop => anyhow::anyhow!("stopped"),
    }
}

/// Sends one frame; answers its size.
async fn send(sink: &mut Sink, message: &FromAgent) -> Result<usize, Ended> {
    let bytes = encode(message).map_err(|e| Ended::Lost(format!("encode {}: {e}", message.type_name())))?;
    let len = bytes.len();
    let text = String::from_utf8(bytes).map_err(|e| Ended::Lost(format!("encode: {e}")))?;
    sink.send(WsMessage::text(text))
        .await
        .map_err(|e| Ended::Lost(format!("send: {e}")))?;
    Ok(len)
}

async fn next_message(stream: &mut Stream) -> Result<FromServer, Ended> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .map_err(|_| Ended::Lost("the server said nothing for 120 s".into()))?;
        if let Some(message) = read_frame(frame)? {
            return Ok(message);
        }
    }
}

fn read_frame(
    frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<FromServer>, Ended> {
    match frame {
        Some(Ok(WsMessage::Text(text))) => decode_from_server(text.as_bytes())
            .map(Some)
            .map_err(|e| Ended::Lost(format!("the server sent a refused frame: {e}"))),
        Some(Ok(WsMessage::Close(_))) | None => Err(Ended::Lost("closed by the server".into())),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(Ended::Lost(format!("connection error: {e}"))),
    }
}
