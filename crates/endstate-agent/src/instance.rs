//! The task that supervises one instance: spawn, wait, restart with backoff, stop.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::{debug, info, warn};

use crate::group::{self, ProcessGroup};
use crate::logs::{InstanceLogs, LogRing, lock};
use crate::{InstanceEvent, InstanceSpec, InstanceState};

/// How long the output of a finished run may still be read after its whole group is gone: only a
/// process that left the group while keeping the pipe open makes this wait, and its later output is lost.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// What the instance task needs; it owns all of it.
pub(crate) struct Instance {
    pub(crate) spec: InstanceSpec,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) done: watch::Sender<bool>,
    pub(crate) logs: Arc<InstanceLogs>,
    pub(crate) events: broadcast::Sender<InstanceEvent>,
}

/// How one run ended.
enum RunEnd {
    Exited { ran_for: Duration },
    Stopped,
}

impl Instance {
    fn emit(&self, state: InstanceState) {
        debug!(instance = %self.spec.id, ?state, "Instance state changed.");
        // No subscriber is not an error: events are a view, the supervisor does not depend on them.
        let _ = self.events.send(InstanceEvent {
            id: self.spec.id.clone(),
            state,
            at: Instant::now(),
        });
    }

    /// Supervises until a stop is asked (or the supervisor is gone), then marks itself done.
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            self.emit(InstanceState::Starting);
            let ran_for = match group::spawn(&self.spec) {
                Err(error) => {
                    warn!(instance = %self.spec.id, program = %self.spec.program.display(), %error, "Instance could not be spawned.");
                    self.emit(InstanceState::SpawnFailed { error: Arc::new(error) });
                    Duration::ZERO
                }
                Ok(child) => match self.run_once(child).await {
                    RunEnd::Exited { ran_for } => ran_for,
                    RunEnd::Stopped => break,
                },
            };
            if ran_for >= self.spec.restart.reset_after {
                attempt = 0;
            }
            attempt = attempt.saturating_add(1);
            let delay = self.spec.restart.delay(attempt);
            self.emit(InstanceState::BackingOff { attempt, delay });
            tokio::select! {
                () = sleep(delay) => {}
                () = stop_requested(&mut self.stop) => {
                    self.emit(InstanceState::Stopping);
                    self.emit(InstanceState::Stopped { killed: false });
                    break;
                }
            }
        }
        self.done.send_replace(true);
    }

    async fn run_once(&mut self, mut child: Child) -> RunEnd {
        let Some(mut group) = child.id().and_then(ProcessGroup::new) else {
            // Only possible if the child was already reaped, which nothing here does before this point.
            warn!(instance = %self.spec.id, "Spawned instance has no process id.");
            self.emit(InstanceState::Exited {
                code: None,
                signal: None,
            });
            return RunEnd::Exited {
                ran_for: Duration::ZERO,
            };
        };
        let pid = child.id().unwrap_or_default();
        let started = Instant::now();
        self.emit(InstanceState::Running { pid });
        info!(instance = %self.spec.id, pid, "Instance running.");
        let readers = [
            child
                .stdout
                .take()
                .map(|pipe| pump(pipe, Arc::clone(&self.logs), |logs| &logs.stdout)),
            child
                .stderr
                .take()
                .map(|pipe| pump(pipe, Arc::clone(&self.logs), |logs| &logs.stderr)),
        ];

        tokio::select! {
            status = child.wait() => {
                let ran_for = started.elapsed();
                let status = status.inspect_err(|error| warn!(instance = %self.spec.id, %error, "Could not wait for instance.")).ok();
                info!(instance = %self.spec.id, pid, ?status, "Instance exited.");
                self.emit(exited(status));
                group.reap_leftovers(self.spec.stop_grace).await;
                drain(readers).await;
                RunEnd::Exited { ran_for }
            }
            () = stop_requested(&mut self.stop) => {
                self.emit(InstanceState::Stopping);
                let (status, killed) = group.stop(&mut child, self.spec.stop_grace).await;
                info!(instance = %self.spec.id, pid, ?status, killed, "Instance stopped.");
                self.emit(exited(status));
                drain(readers).await;
                self.emit(InstanceState::Stopped { killed });
                RunEnd::Stopped
            }
        }
    }
}

fn exited(status: Option<ExitStatus>) -> InstanceState {
    InstanceState::Exited {
        code: status.and_then(|status| status.code()),
        signal: status.and_then(|status| status.signal()),
    }
}

/// Resolves once a stop is asked, or once the supervisor is gone (which also means stop).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Copies a pipe into its ring buffer until end of file.
fn pump(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    logs: Arc<InstanceLogs>,
    ring: fn(&InstanceLogs) -> &Mutex<LogRing>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0_u8; 8 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n_read) => lock(ring(&logs)).push(&buf[..n_read]),
            }
        }
    })
}

/// Waits, a bounded time, for the readers to reach end of file; aborts those that do not.
async fn drain(readers: [Option<JoinHandle<()>>; 2]) {
    let deadline = Instant::now() + PIPE_DRAIN;
    for mut reader in readers.into_iter().flatten() {
        if timeout_at(deadline, &mut reader).await.is_err() {
            reader.abort();
        }
    }
}
