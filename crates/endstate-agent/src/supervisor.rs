//! The supervisor actor and its handle.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::info;

use crate::instance::Instance;
use crate::logs::{DEFAULT_LOG_CAPACITY, InstanceLogs};
use crate::{InstanceEvent, InstanceSpec, LogSnapshot};

/// How the supervisor is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// The bytes kept per stream (stdout, stderr) of each instance.
    pub log_capacity: usize,
    /// The events a subscriber may fall behind by before it misses some (and is told so).
    pub event_capacity: usize,
    /// The commands that may wait for the supervisor before callers wait to send.
    pub command_capacity: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            log_capacity: DEFAULT_LOG_CAPACITY,
            event_capacity: 1024,
            command_capacity: 64,
        }
    }
}

/// Errors of [`SupervisorHandle`] calls.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No instance with this id was ever started.
    #[error("unknown instance {0:?}")]
    UnknownInstance(String),
    /// An instance with this id is running (or stopping); stop it first.
    #[error("instance {0:?} is already supervised")]
    AlreadySupervised(String),
    /// The supervisor task has ended (it was shut down, or the runtime is going away).
    #[error("the supervisor has shut down")]
    ShutDown,
}

/// The closed set of requests the supervisor task serves, each with its reply channel.
enum Command {
    Start {
        spec: InstanceSpec,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    Stop {
        id: String,
        reply: oneshot::Sender<Result<watch::Receiver<bool>, SupervisorError>>,
    },
    Logs {
        id: String,
        reply: oneshot::Sender<Result<LogSnapshot, SupervisorError>>,
    },
    List {
        reply: oneshot::Sender<Vec<String>>,
    },
    Forget {
        id: String,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The supervisor task's record of one instance.
struct Entry {
    stop: watch::Sender<bool>,
    // True once the instance task has ended (its sender is then also dropped).
    done: watch::Receiver<bool>,
    logs: Arc<InstanceLogs>,
}

impl Entry {
    fn is_done(&self) -> bool {
        *self.done.borrow() || self.done.has_changed().is_err()
    }
}

/// The process supervisor. See the crate documentation.
#[derive(Debug)]
pub struct Supervisor;

impl Supervisor {
    /// Spawns the supervisor task on the current tokio runtime and returns its handle.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    #[must_use]
    pub fn spawn(config: SupervisorConfig) -> SupervisorHandle {
        let (commands_tx, commands_rx) = mpsc::channel(config.command_capacity.max(1));
        let (events_tx, _) = broadcast::channel(config.event_capacity.max(1));
        tokio::spawn(run(commands_rx, events_tx.clone(), config));
        SupervisorHandle {
            commands: commands_tx,
            events: events_tx,
        }
    }
}

/// The way to talk to a [`Supervisor`]. Cheap to clone; the supervisor stops every instance and
/// ends once every handle is dropped.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<InstanceEvent>,
}

impl SupervisorHandle {
    /// A new receiver of every instance event sent from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SupervisorError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.commands
            .send(command(reply_tx))
            .await
            .map_err(|_| SupervisorError::ShutDown)?;
        reply_rx.await.map_err(|_| SupervisorError::ShutDown)
    }

    /// Starts supervising an instance: it is spawned now and restarted whenever it exits, until stopped.
    /// Its log buffers start empty. Returns once the supervisor has taken it, before it is spawned.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::AlreadySupervised`] if an instance with the same id is not stopped yet;
    /// [`SupervisorError::ShutDown`].
    pub async fn start(&self, spec: InstanceSpec) -> Result<(), SupervisorError> {
        self.ask(|reply| Command::Start { spec, reply }).await?
    }

    /// Stops an instance (SIGTERM to its group, `stop_grace`, SIGKILL) and returns once it is
    /// `Stopped`. Stopping a stopped instance does nothing. Its logs stay readable.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::UnknownInstance`]; [`SupervisorError::ShutDown`].
    pub async fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        let mut done = self.ask(|reply| Command::Stop { id, reply }).await??;
        // An error means the instance task is gone, which is also done.
        let _ = done.wait_for(|done| *done).await;
        Ok(())
    }

    /// The recent output of an instance, running or stopped.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::UnknownInstance`]; [`SupervisorError::ShutDown`].
    pub async fn logs(&self, id: &str) -> Result<LogSnapshot, SupervisorError> {
        let id = id.to_owned();
        self.ask(|reply| Command::Logs { id, reply }).await?
    }

    /// The ids of the instances known to the supervisor (stopped ones included), in order.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::ShutDown`].
    pub async fn instances(&self) -> Result<Vec<String>, SupervisorError> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// Forgets a stopped instance and its log buffers, so the supervisor's table does not grow
    /// with every instance ever started. Its id may be started again later.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::UnknownInstance`]; [`SupervisorError::AlreadySupervised`] if it is not
    /// stopped yet (stop it first); [`SupervisorError::ShutDown`].
    pub async fn forget(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.ask(|reply| Command::Forget { id, reply }).await?
    }

    /// Stops every instance (concurrently, each with its own grace) and ends the supervisor.
    /// Later calls on any handle return [`SupervisorError::ShutDown`].
    ///
    /// # Errors
    ///
    /// [`SupervisorError::ShutDown`] if it had already ended.
    pub async fn shutdown(&self) -> Result<(), SupervisorError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }
}

async fn run(
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<InstanceEvent>,
    config: SupervisorConfig,
) {
    let mut instances: BTreeMap<String, Entry> = BTreeMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Start { spec, reply } => {
                if instances.get(&spec.id).is_some_and(|entry| !entry.is_done()) {
                    let _ = reply.send(Err(SupervisorError::AlreadySupervised(spec.id)));
                    continue;
                }
                let (stop_tx, stop_rx) = watch::channel(false);
                let (done_tx, done_rx) = watch::channel(false);
                let logs = Arc::new(InstanceLogs::new(config.log_capacity));
                let id = spec.id.clone();
                let instance = Instance {
                    spec,
                    stop: stop_rx,
                    done: done_tx,
                    logs: Arc::clone(&logs),
                    events: events.clone(),
                };
                tokio::spawn(instance.run());
                instances.insert(
                    id,
                    Entry {
                        stop: stop_tx,
                        done: done_rx,
                        logs,
                    },
                );
                let _ = reply.send(Ok(()));
            }
            Command::Stop { id, reply } => {
                let result = match instances.get(&id) {
                    Some(entry) => {
                        entry.stop.send_replace(true);
                        Ok(entry.done.clone())
                    }
                    None => Err(SupervisorError::UnknownInstance(id)),
                };
                let _ = reply.send(result);
            }
            Command::Logs { id, reply } => {
                let result = match instances.get(&id) {
                    Some(entry) => Ok(entry.logs.snapshot()),
                    None => Err(SupervisorError::UnknownInstance(id)),
                };
                let _ = reply.send(result);
            }
            Command::List { reply } => {
                let _ = reply.send(instances.keys().cloned().collect());
            }
            Command::Forget { id, reply } => {
                let result = match instances.get(&id) {
                    None => Err(SupervisorError::UnknownInstance(id)),
                    Some(entry) if !entry.is_done() => Err(SupervisorError::AlreadySupervised(id)),
                    Some(_) => {
                        instances.remove(&id);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Shutdown { reply } => {
                stop_all(instances).await;
                let _ = reply.send(());
                return;
            }
        }
    }
    // Every handle is gone: nobody can stop the instances any more, so stop them now.
    stop_all(instances).await;
}

async fn stop_all(instances: BTreeMap<String, Entry>) {
    info!(n_instances = instances.len(), "Supervisor stopping every instance.");
    for entry in instances.values() {
        entry.stop.send_replace(true);
    }
    for mut entry in instances.into_values() {
        let _ = entry.done.wait_for(|done| *done).await;
    }
}
