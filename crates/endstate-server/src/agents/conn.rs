//! The agent listener: TLS with client certificates, then one websocket per agent, one protocol
//! message per text frame.
//!
//! # Guarantees
//! - A peer without a certificate of this server's CA fails the TLS handshake (rustls). A
//!   certificate of this CA whose host is unknown, revoked, or whose serial is neither the host's
//!   current nor its previous one is refused after the handshake with a `refused` or `revoke`
//!   frame, a log line and a timeline event.
//! - Frames are bounded by the protocol's 4 MiB before they are parsed; a malformed or unknown
//!   frame is logged and recorded (at most one timeline event per connection and minute), and the
//!   connection goes on; a frame over the bound ends the connection.
//! - Observations are acknowledged only after they are committed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use endstate_agent_proto::{
    Ack, ActualState, FromAgent, FromServer, Hello, InstanceStateWord, Observation, Observed, Refused, Revoke,
    SUPPORTED_VERSIONS, SeqDecision, Welcome, classify_seq, decode_from_agent, encode, limits, negotiate,
};
use endstate_store::{ActualInstance, HostRecord, InstanceTransition, NewEvent, ObservationBatch, StoreError};
use endstate_types::HostName;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{ConnHandle, Hub, status_of};
use crate::AppState;
use crate::error::ApiError;
use crate::fleet::{Live, word};

/// How long a peer has for the TLS handshake, the websocket upgrade and its `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes (TLS, websocket upgrade, hello, registration) made at once; later connections are
/// accepted and wait their turn. After a server restart every agent reconnects within a second or
/// two: thousands of handshakes sharing the CPU would all finish late (and starve the rest of the
/// server), where a bounded number finish in order, each as fast as it can.
const CONCURRENT_HANDSHAKES: usize = 256;

/// Frames queued to one agent before the sender waits.
const OUTBOX: usize = 64;

/// Accepts agents until `stop` says so.
pub(crate) async fn serve(state: AppState, hub: Arc<Hub>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&hub.tls.server_config));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (state, hub, acceptor, stop) = (state.clone(), Arc::clone(&hub), acceptor.clone(), stop.clone());
                let handshakes = Arc::clone(&handshakes);
                tokio::spawn(async move {
                    let Ok(turn) = handshakes.acquire_owned().await else {
                        return;
                    };
                    if let Err(error) = connection(&state, &hub, acceptor, stream, peer, stop, turn).await {
                        tracing::warn!(%peer, error = %crate::chain(&error), "Agent connection failed.");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!(error = %error, "Agent listener accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

async fn connection(
    state: &AppState,
    hub: &Arc<Hub>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    handshake_turn: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), ApiError> {
    // The larger futures awaited here are boxed (the handshakes, the hello's record, a message's
    // handling, the unreachable marking): a future is as large as its largest state, and the
    // websocket upgrade's alone is ~10 KB that every idle connection would otherwise keep.
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            // Anyone can fail a handshake: the log has every one, the timeline at most one per
            // 10 s, so scanners cannot flood it.
            let now = state.now_ms();
            let last = hub.last_tls_event_ms.load(Ordering::Relaxed);
            if now - last >= 10_000
                && hub
                    .last_tls_event_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                refused_event(state, None, peer, &format!("TLS handshake failed: {error}")).await;
            } else {
                tracing::warn!(%peer, error = %error, "Agent TLS handshake failed.");
            }
            return Ok(());
        }
        Err(_) => {
            tracing::info!(%peer, "Agent TLS handshake timed out.");
            return Ok(());
        }
    };
    let Some(der) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
    else {
        refused_event(state, None, peer, "no client certificate").await;
        return Ok(());
    };
    // A small read buffer: tungstenite's default is 128 KiB per connection, zero-filled, so
    // 10,000 idle agents would cost 1.25 GiB; a larger frame grows the buffer as it needs.
    let mut config = WebSocketConfig::default().read_buffer_size(1024);
    config.max_message_size = Some(limits::MAX_FRAME_BYTES);
    config.max_frame_size = Some(limits::MAX_FRAME_BYTES);
    let mut ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        Box::pin(tokio_tungstenite::accept_async_with_config(tls, Some(config))),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            tracing::info!(%peer, error = %error, "Agent websocket upgrade failed.");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };

    // Who is it? The chain was checked by rustls; the host and serial are checked here.
    let now = state.now_ms();
    let identity = match endstate_pki::verify_agent_cert_der(&hub.tls.ca_pem, &der, now) {
        Ok(identity) => identity,
        Err(error) => {
            let reason = format!("certificate refused: {error}");
            refuse(&mut ws, &reason).await;
            refused_event(state, None, peer, &reason).await;
            return Ok(());
        }
    };
    let host = identity.host_name.clone();
    let name = HostName(host.clone());
    let Some(agent) = state.store().get_agent(&name).await? else {
        let reason = format!("host {host} is not enrolled");
        refuse(&mut ws, &reason).await;
        refused_event(state, Some(&host), peer, &reason).await;
        return Ok(());
    };
    if agent.revoked_ms.is_some() {
        let reason = format!("host {host} is revoked");
        let _ = send(&mut ws, &FromServer::Revoke(Revoke { reason: reason.clone() })).await;
        let _ = ws.close(None).await;
        refused_event(state, Some(&host), peer, &reason).await;
        return Ok(());
    }
    if identity.serial != agent.cert_serial && agent.prev_serial.as_deref() != Some(identity.serial.as_str()) {
        let reason = format!(
            "certificate {} of host {host} was superseded by a newer one",
            identity.serial
        );
        refuse(&mut ws, &reason).await;
        refused_event(state, Some(&host), peer, &reason).await;
        return Ok(());
    }

    // hello
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, next_frame(&mut ws)).await {
        Ok(Some(Ok(FromAgent::Hello(hello)))) => hello,
        Ok(Some(Ok(other))) => {
            refuse(&mut ws, &format!("expected hello first, got {}", other.type_name())).await;
            return Ok(());
        }
        Ok(Some(Err(reason))) => {
            refuse(&mut ws, &reason).await;
            refused_event(state, Some(&host), peer, &reason).await;
            return Ok(());
        }
        Ok(None) | Err(_) => return Ok(()),
    };
    let version = match negotiate(hello.versions, SUPPORTED_VERSIONS) {
        Ok(version) => version,
        Err(error) => {
            let reason = error.to_string();
            let _ = send(
                &mut ws,
                &FromServer::Refused(Refused {
                    reason: reason.clone(),
                    agent_versions: hello.versions,
                    server_versions: SUPPORTED_VERSIONS,
                }),
            )
            .await;
            let _ = ws.close(None).await;
            refused_event(state, Some(&host), peer, &reason).await;
            return Ok(());
        }
    };
    if hello.host.0 != host {
        let reason = format!("hello names host {} but the certificate is for {host}", hello.host.0);
        refuse(&mut ws, &reason).await;
        refused_event(state, Some(&host), peer, &reason).await;
        return Ok(());
    }
    send(
        &mut ws,
        &FromServer::Welcome(Welcome {
            version,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    )
    .await?;
    // Recording the hello and registering the connection happen under the host's lock, so a
    // concurrent "unreachable" of the previous connection cannot land after them.
    let host_lock = hub.host_lock(&host);
    let guard = host_lock.lock().await;
    let was_reachable = state.store().get_agent(&name).await?.and_then(|a| a.reachable);
    Box::pin(record_hello(
        state,
        &name,
        &hello,
        was_reachable,
        &identity.serial,
        peer,
    ))
    .await?;

    // Steady state: a writer task drains the outbox; this task reads.
    let (tx, mut rx) = mpsc::channel::<FromServer>(OUTBOX);
    let handle = ConnHandle {
        id: hub.next_id(),
        tx: tx.clone(),
        last_heard_ms: Arc::new(AtomicI64::new(state.now_ms())),
        sent_generation: Arc::new(AtomicU64::new(0)),
        close: Arc::new(tokio::sync::Notify::new()),
        peer_ip: peer.ip(),
    };
    hub.register(&host, handle.clone());
    drop(guard);
    drop(handshake_turn);
    tracing::info!(host, %peer, version, "Agent connected.");
    let (mut sink, mut stream) = ws.split();
    // Told when the session ends, so the writer closes the websocket and the TLS session
    // properly (close frame, close_notify) instead of being cut off.
    let (finish, mut finished) = tokio::sync::oneshot::channel::<()>();
    let mut writer = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = &mut finished => break,
            };
            let Ok(text) = encode(&message) else {
                tracing::error!(
                    kind = message.type_name(),
                    "A message to an agent broke the protocol's bounds; not sent."
                );
                continue;
            };
            if sink
                .send(WsMessage::text(String::from_utf8_lossy(&text).into_owned()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut session = Session {
        state,
        hub,
        host: host.clone(),
        name: name.clone(),
        tx,
        last_seq: agent.last_seq,
        last_protocol_event_ms: 0,
        handle: handle.clone(),
    };
    // Frames handled since this task last let the others run. Without yielding, a connection
    // with frames always waiting runs tokio's whole budget (128 frames) per turn: with 10,000
    // connections flooding, a turn of them all took longer than the keepalive timeout, and the
    // liveness sweep closed connections that were only waiting for their turn.
    let mut since_yield = 0u32;
    let ended = loop {
        since_yield += 1;
        if since_yield >= FRAMES_PER_TURN {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = handle.close.notified() => break "closed by the server".to_owned(),
            _ = stop.changed() => break "server stopping".to_owned(),
        };
        let bytes = match frame {
            None => break "connection closed".to_owned(),
            Some(Err(error)) => break format!("connection error: {error}"),
            Some(Ok(WsMessage::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(WsMessage::Binary(_))) => {
                session
                    .protocol_error("binary frame (the protocol is text frames)")
                    .await;
                continue;
            }
            Some(Ok(WsMessage::Close(_))) => break "closed by the agent".to_owned(),
            Some(Ok(_)) => continue,
        };
        handle.last_heard_ms.store(state.now_ms(), Ordering::Relaxed);
        match decode_from_agent(&bytes) {
            Ok(message) => {
                if let Err(error) = Box::pin(session.handle(message)).await {
                    tracing::warn!(host, error = %crate::chain(&error), "Agent message failed; closing the connection.");
                    break format!("server error: {error}");
                }
            }
            Err(error) => session.protocol_error(&error.to_string()).await,
        }
    };
    drop(session);
    let _ = finish.send(());
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    tracing::info!(host, reason = ended, "Agent disconnected.");
    if hub.unregister(&host, handle.id) && !*stop.borrow() {
        Box::pin(super::mark_unreachable(state, hub, &host, &ended)).await?;
    }
    Ok(())
}

/// How many frames one connection handles before it lets the others run.
const FRAMES_PER_TURN: u32 = 16;

struct Session<'a> {
    state: &'a AppState,
    hub: &'a Hub,
    host: String,
    name: HostName,
    tx: mpsc::Sender<FromServer>,
    last_seq: u64,
    last_protocol_event_ms: i64,
    handle: ConnHandle,
}

impl Session<'_> {
    async fn handle(&mut self, message: FromAgent) -> Result<(), ApiError> {
        match message {
            FromAgent::Keepalive(_) => {}
            FromAgent::Hello(_) => self.protocol_error("a second hello").await,
            FromAgent::Facts(facts) => {
                if let Some(mut host) = self.state.store().get_host(&self.name).await? {
                    let facts = serde_json::to_value(&facts).unwrap_or_default();
                    let changed = facts_changed(&self.host, &host.facts, &facts, self.state.now_ms());
                    host.facts = facts;
                    host.last_seen_ms = Some(self.state.now_ms());
                    self.state.store().upsert_host(host).await?;
                    if let Some(event) = changed {
                        self.state.store().append_events(vec![event]).await?;
                        self.state.written();
                    }
                }
            }
            FromAgent::Observations(batch) => self.observations(batch.observations).await?,
            FromAgent::ActualState(actual) => {
                self.actual_state(actual).await?;
                // Whatever the agent had, it now gets the current set (if it has not seen it).
                self.handle.sent_generation.store(0, Ordering::Relaxed);
                self.hub.refresh_host(self.state, &self.host).await?;
            }
            FromAgent::Logs(logs) => self.hub.deliver_logs(&self.host, logs),
            FromAgent::ActionOutput(piece) => crate::actions::output(self.state, &self.host, piece),
            FromAgent::Renew(renew) => self.renew(&renew.csr_pem).await?,
        }
        Ok(())
    }

    async fn observations(&mut self, observations: Vec<Observation>) -> Result<(), ApiError> {
        for _attempt in 0..2 {
            let mut transitions = Vec::new();
            let mut events = Vec::new();
            let mut last = self.last_seq;
            let received_ms = self.state.now_ms();
            let mut live_updates: Vec<(String, Live)> = Vec::new();
            let mut live = self.hub.live_of(&self.host);
            let mut checks = Vec::new();
            let mut action_results = Vec::new();
            for observation in &observations {
                match classify_seq(last, observation.seq) {
                    SeqDecision::Duplicate => continue,
                    SeqDecision::Next => {}
                    SeqDecision::Gap { from, to } => events.push(NewEvent {
                        host: Some(self.host.clone()),
                        actor: Some(format!("agent:{}", self.host)),
                        ..NewEvent::of(
                            received_ms,
                            &endstate_events::Event::AgentObservationsLost(endstate_events::ObservationsLost {
                                from,
                                to,
                            }),
                            format!("observations {from} to {to} of {} never arrived", self.host),
                        )
                    }),
                }
                last = observation.seq;
                let at = i64::try_from(observation.at_unix_ms).unwrap_or(received_ms);
                if let Observed::Check(check) = &observation.observed {
                    checks.push((at, check.clone()));
                    continue;
                }
                if let Observed::Action(result) = &observation.observed {
                    // Stored with the batch, so a resent result is recorded once.
                    events.push(crate::actions::result_event(self.state, &self.host, at, result));
                    action_results.push(result.clone());
                    continue;
                }
                self.observe(observation, at, received_ms, &mut live, &mut transitions, &mut events);
            }
            if last == self.last_seq {
                // Every one was a duplicate: acknowledge again.
                return self.ack().await;
            }
            for (id, l) in &live {
                live_updates.push((id.clone(), l.clone()));
            }
            let batch = ObservationBatch {
                expect_last_seq: self.last_seq,
                last_seq: last,
                transitions,
                events,
            };
            match self.state.store().ingest_observations(&self.name, batch).await {
                Ok(_) => {
                    self.last_seq = last;
                    self.hub.update_live(&self.host, |stored| {
                        for (id, l) in live_updates {
                            stored.insert(id, l);
                        }
                    });
                    self.state.written();
                    self.ack().await?;
                    crate::actions::ingest(self.state, &self.host, &action_results);
                    // Stored and acknowledged; the alert engine's verdicts follow. A failure there
                    // (the store refusing its events) must not cut the agent's link.
                    if let Err(error) = crate::monitor::ingest(self.state, &self.host, checks).await {
                        tracing::warn!(host = %self.host, error = %crate::chain(&error), "Check results could not be evaluated.");
                    }
                    return Ok(());
                }
                Err(StoreError::Refused { .. }) => {
                    // Another connection of this host stored observations since: re-read and retry.
                    if let Some(agent) = self.state.store().get_agent(&self.name).await? {
                        self.last_seq = agent.last_seq;
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    fn observe(
        &self,
        observation: &Observation,
        at: i64,
        received_ms: i64,
        live: &mut BTreeMap<String, Live>,
        transitions: &mut Vec<InstanceTransition>,
        events: &mut Vec<NewEvent>,
    ) {
        match &observation.observed {
            Observed::InstanceState(change)
                if live
                    .get(&change.instance.0)
                    .is_some_and(|l| change.generation.0 < l.generation) =>
            {
                // A run of an older generation, retired after its replacement started beside it
                // (start-before-stop): on the timeline, but not the instance's state any more.
                events.push(self.instance_event(
                    &change.instance.0,
                    at,
                    &endstate_events::Event::InstancePreviousRun(endstate_events::InstancePreviousRun {
                        instance: change.instance.0.clone(),
                        state: word(change.state).to_owned(),
                        version: change.version.clone(),
                        generation: change.generation.0,
                        received_ms,
                    }),
                    format!(
                        "{} on {}: the previous run ({} at generation {}) is {}",
                        change.instance,
                        self.host,
                        change.version,
                        change.generation,
                        word(change.state)
                    ),
                ));
            }
            Observed::InstanceState(change) => {
                let entry = live.entry(change.instance.0.clone()).or_default();
                // A new process (a start, or a run of a newer generation) has no health verdict
                // yet: the previous run's must not count for it.
                let new_process = change.generation.0 > entry.generation
                    || matches!(
                        change.state,
                        InstanceStateWord::Starting
                            | InstanceStateWord::Exited
                            | InstanceStateWord::Stopped
                            | InstanceStateWord::SpawnFailed
                    );
                if new_process {
                    entry.healthy = None;
                    entry.healthy_since_ms = None;
                }
                entry.state = Some(change.state);
                entry.version.clone_from(&change.version);
                entry.generation = change.generation.0;
                entry.restarts = change.restarts;
                let status = status_of(change.state, entry.healthy);
                if let Some(t) = self.transition(&change.instance.0, &change.version, change.state, status, at) {
                    transitions.push(t);
                }
                if !change.detail.is_empty() || change.exit_code.is_some() || change.signal.is_some() {
                    events.push(self.instance_event(
                        &change.instance.0,
                        at,
                        &endstate_events::Event::InstanceDetail(endstate_events::InstanceDetail {
                            instance: change.instance.0.clone(),
                            state: word(change.state).to_owned(),
                            exit_code: change.exit_code,
                            signal: change.signal,
                            restarts: change.restarts,
                            detail: change.detail.clone(),
                            received_ms,
                        }),
                        format!(
                            "{} on {} {}{}{}{}",
                            change.instance,
                            self.host,
                            word(change.state),
                            change.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default(),
                            change.signal.map(|s| format!(", signal {s}")).unwrap_or_default(),
                            if change.detail.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", change.detail)
                            },
                        ),
                    ));
                }
            }
            Observed::Health(health) => {
                let entry = live.entry(health.instance.0.clone()).or_default();
                if !health.healthy {
                    entry.healthy_since_ms = None;
                } else if entry.healthy != Some(true) {
                    entry.healthy_since_ms = Some(at);
                }
                entry.healthy = Some(health.healthy);
                let state = entry.state.unwrap_or(InstanceStateWord::Running);
                let version = entry.version.clone();
                let status = status_of(state, Some(health.healthy));
                if let Some(t) = self.transition(&health.instance.0, &version, state, status, at) {
                    transitions.push(t);
                }
                // The detail of a failing probe is what a person needs; a passing one says nothing new.
                if !health.healthy && !health.detail.is_empty() {
                    events.push(self.instance_event(
                        &health.instance.0,
                        at,
                        &endstate_events::Event::InstanceHealth(endstate_events::InstanceHealth {
                            instance: health.instance.0.clone(),
                            healthy: health.healthy,
                            detail: health.detail.clone(),
                        }),
                        format!("{} on {} is unhealthy: {}", health.instance, self.host, health.detail),
                    ));
                }
            }
            Observed::Resources(use_) => {
                let entry = live.entry(use_.instance.0.clone()).or_default();
                entry.rss_bytes = use_.rss_bytes;
                entry.cpu_millis = use_.cpu_millis;
            }
            // Taken by `observations` for the alert engine and the action runs.
            Observed::Check(_) | Observed::Action(_) => {}
        }
    }

    /// A timeline event about one instance of this host, reported by its agent.
    fn instance_event(&self, instance: &str, at: i64, event: &endstate_events::Event, summary: String) -> NewEvent {
        let (system, component) = split_system(instance);
        NewEvent {
            systems: vec![system],
            host: Some(self.host.clone()),
            component: Some(component),
            actor: Some(format!("agent:{}", self.host)),
            ..NewEvent::of(at, event, summary)
        }
    }

    fn transition(
        &self,
        instance: &str,
        version: &str,
        state: InstanceStateWord,
        status: endstate_types::Status,
        at: i64,
    ) -> Option<InstanceTransition> {
        let (key, slot) = instance.rsplit_once('#')?;
        Some(InstanceTransition {
            component_key: key.to_owned(),
            host: self.name.clone(),
            slot: slot.parse().ok()?,
            actual: ActualInstance {
                version: Some(version.to_owned()),
                status,
                state: word(state).to_owned(),
                since_ms: at,
            },
            change: None,
            actor: Some(format!("agent:{}", self.host)),
        })
    }

    async fn actual_state(&mut self, actual: ActualState) -> Result<(), ApiError> {
        let now = self.state.now_ms();
        let mut transitions = Vec::new();
        let mut live = self.hub.live_of(&self.host);
        let reported: std::collections::BTreeSet<String> =
            actual.instances.iter().map(|i| i.instance.0.clone()).collect();
        for instance in &actual.instances {
            let entry = live.entry(instance.instance.0.clone()).or_default();
            let changed = entry.state != Some(instance.state) || entry.version != instance.version;
            entry.state = Some(instance.state);
            entry.version.clone_from(&instance.version);
            entry.generation = instance.generation.0;
            // A healthy verdict fills in what a restarted server does not know; an unhealthy one
            // is not trusted here (before its first probe a run reads unhealthy): failures come
            // as health observations.
            if instance.healthy == Some(true) && entry.healthy.is_none() {
                entry.healthy = Some(true);
                entry.healthy_since_ms = Some(now);
            }
            if changed {
                let status = status_of(instance.state, entry.healthy);
                if let Some(t) = self.transition(&instance.instance.0, &instance.version, instance.state, status, now) {
                    transitions.push(t);
                }
            }
        }
        live.retain(|id, _| reported.contains(id));
        self.hub.update_live(&self.host, |stored| *stored = live);
        if !transitions.is_empty() {
            let batch = ObservationBatch {
                expect_last_seq: self.last_seq,
                last_seq: self.last_seq,
                transitions,
                events: Vec::new(),
            };
            match self.state.store().ingest_observations(&self.name, batch).await {
                Ok(_) | Err(StoreError::Refused { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            self.state.written();
        }
        Ok(())
    }

    async fn renew(&mut self, csr_pem: &str) -> Result<(), ApiError> {
        let now = crate::clock::system_now_ms();
        let issued = match self
            .hub
            .tls
            .ca
            .sign_agent(csr_pem, &self.host, now, self.hub.config.cert_lifetime)
        {
            Ok(issued) => issued,
            Err(error) => {
                self.protocol_error(&format!("renewal refused: {error}")).await;
                return Ok(());
            }
        };
        let event = NewEvent {
            host: Some(self.host.clone()),
            actor: Some(format!("agent:{}", self.host)),
            ..NewEvent::of(
                now,
                &endstate_events::Event::AgentRenewed(endstate_events::AgentRenewed {
                    serial: issued.serial.clone(),
                    not_after: crate::rfc3339(issued.not_after),
                }),
                format!("host {} renewed its certificate", self.host),
            )
        };
        self.state
            .store()
            .renew_agent(&self.name, issued.serial.clone(), vec![event])
            .await?;
        let _ = self
            .tx
            .send(FromServer::Certificate(endstate_agent_proto::Certificate {
                cert_pem: issued.cert_pem,
            }))
            .await;
        Ok(())
    }

    async fn ack(&self) -> Result<(), ApiError> {
        let _ = self
            .tx
            .send(FromServer::Ack(Ack {
                up_to_seq: self.last_seq,
            }))
            .await;
        Ok(())
    }

    /// Logs every protocol error; records one per minute on the timeline.
    async fn protocol_error(&mut self, reason: &str) {
        tracing::warn!(
            host = self.host,
            reason,
            "Agent sent a frame the protocol refuses; ignored."
        );
        let now = self.state.now_ms();
        if now - self.last_protocol_event_ms < 60_000 {
            return;
        }
        self.last_protocol_event_ms = now;
        let event = NewEvent {
            host: Some(self.host.clone()),
            actor: Some(format!("agent:{}", self.host)),
            ..NewEvent::of(
                now,
                &endstate_events::Event::AgentProtocolError(endstate_events::Reason {
                    reason: reason.to_owned(),
                }),
                format!("host {} sent a refused frame: {reason}", self.host),
            )
        };
        if self.state.store().append_events(vec![event]).await.is_ok() {
            self.state.written();
        }
    }
}

async fn record_hello(
    state: &AppState,
    name: &HostName,
    hello: &Hello,
    was_reachable: Option<bool>,
    serial: &str,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let now = state.now_ms();
    let stored = state.store().get_host(name).await?;
    // Labels are the ones decided at enrolment: an agent cannot relabel itself into other workloads.
    let labels = stored.as_ref().map(|h| h.labels.clone()).unwrap_or_default();
    let facts = serde_json::to_value(&hello.facts).unwrap_or_default();
    let changed = stored
        .as_ref()
        .and_then(|h| facts_changed(&name.0, &h.facts, &facts, now));
    state
        .store()
        .upsert_host(HostRecord {
            name: name.clone(),
            labels,
            facts,
            last_seen_ms: Some(now),
            retired_ms: None,
        })
        .await?;
    let mut events: Vec<NewEvent> = changed.into_iter().collect();
    if was_reachable != Some(true) {
        events.push(NewEvent {
            host: Some(name.0.clone()),
            actor: Some(format!("agent:{}", name.0)),
            ..NewEvent::of(
                now,
                &endstate_events::Event::HostReachable(endstate_events::HostReachable {
                    peer: peer.to_string(),
                    agent_version: hello.agent_version.clone(),
                }),
                format!(
                    "host {} is reachable (agent {} from {peer})",
                    name.0, hello.agent_version
                ),
            )
        });
    }
    state
        .store()
        .set_agent_reachable(name, true, Some(serial.to_owned()), events)
        .await?;
    state.written();
    if was_reachable == Some(false) {
        crate::monitor::keepalive(
            state,
            &name.0,
            true,
            &format!("reachable again (agent {})", hello.agent_version),
            &[],
        )
        .await?;
    }
    Ok(())
}

async fn next_frame(ws: &mut Ws) -> Option<Result<FromAgent, String>> {
    loop {
        match ws.next().await? {
            Ok(WsMessage::Text(text)) => return Some(decode_from_agent(text.as_bytes()).map_err(|e| e.to_string())),
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(ws: &mut Ws, message: &FromServer) -> Result<(), ApiError> {
    let text = encode(message).map_err(|e| ApiError::Internal(e.to_string()))?;
    ws.send(WsMessage::text(String::from_utf8_lossy(&text).into_owned()))
        .await
        .map_err(|e| ApiError::Internal(format!("cannot send to the agent: {e}")))
}

async fn refuse(ws: &mut Ws, reason: &str) {
    let message = FromServer::Refused(Refused {
        reason: truncate(reason, limits::MAX_DETAIL_BYTES),
        agent_versions: SUPPORTED_VERSIONS,
        server_versions: SUPPORTED_VERSIONS,
    });
    let _ = send(ws, &message).await;
    let _ = ws.close(None).await;
}

async fn refused_event(state: &AppState, host: Option<&str>, peer: SocketAddr, reason: &str) {
    tracing::warn!(%peer, host, reason, "Agent connection refused.");
    let event = NewEvent {
        host: host.map(str::to_owned),
        actor: Some(format!("peer:{}", peer.ip())),
        ..NewEvent::of(
            state.now_ms(),
            &endstate_events::Event::AgentRefused(endstate_events::PeerRefused {
                peer: peer.to_string(),
                reason: reason.to_string(),
            }),
            format!("agent connection from {peer} refused: {reason}"),
        )
    };
    if state.store().append_events(vec![event]).await.is_ok() {
        state.written();
    }
}

/// The inventory's history of a host: an event when its facts change (free disk space, which
/// changes all the time, is kept current but not recorded as a change). `None` for the first
/// facts and when nothing else changed.
fn facts_changed(host: &str, before: &serde_json::Value, after: &serde_json::Value, now: i64) -> Option<NewEvent> {
    if before.as_object().is_none_or(serde_json::Map::is_empty) {
        return None;
    }
    let changes: Vec<_> = endstate_plan::diff_values(before, after)
        .into_iter()
        .filter(|d| !d.path.ends_with("free_bytes"))
        .collect();
    if changes.is_empty() {
        return None;
    }
    let value = |v: &Option<serde_json::Value>| v.as_ref().map_or_else(|| "(none)".to_owned(), ToString::to_string);
    let shown: Vec<String> = changes
        .iter()
        .map(|d| format!("{}: {} -> {}", d.path, value(&d.before), value(&d.after)))
        .collect();
    let changes = changes
        .into_iter()
        .map(|d| endstate_events::FieldChange {
            path: d.path,
            before: d.before,
            after: d.after,
        })
        .collect();
    Some(NewEvent {
        host: Some(host.to_owned()),
        actor: Some(format!("agent:{host}")),
        ..NewEvent::of(
            now,
            &endstate_events::Event::HostFactsChanged(endstate_events::HostFactsChanged { changes }),
            format!("host {host} facts changed: {}", shown.join("; ")),
        )
    })
}

fn split_system(instance: &str) -> (String, String) {
    let key = instance.split('#').next().unwrap_or(instance);
    let system = key.split('/').next().unwrap_or(key);
    (system.to_owned(), key.to_owned())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
