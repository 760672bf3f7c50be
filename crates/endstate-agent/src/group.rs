//! The operating-system side of an instance: spawning it as a process group and signalling that group.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};
use tracing::warn;

use crate::InstanceSpec;

/// How often a group whose leader is gone is checked for remaining members.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// The process group `child` leads (it was spawned with `process_group(0)`), while it has a pid.
pub(crate) fn led_by(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
        .map(Pid::from_raw)
}

/// SIGKILL to a whole group at once; ESRCH (nothing left in it) is the usual answer.
pub(crate) fn kill_now(group: Option<Pid>) {
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// Spawns the instance's program as the leader of a new process group, with piped output.
pub(crate) fn spawn(spec: &InstanceSpec) -> io::Result<Child> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = spec.run_as {
        // std sets the group, drops the supplementary groups (as root) and then sets the user.
        command.gid(gid).uid(uid);
    }
    command.spawn()
}

/// A live process group. Dropping it while armed sends SIGKILL to the whole group, so an aborted
/// supervisor task (a runtime shutting down) leaves no process behind.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pgid: Pid,
    // Invariant: false once the group was seen empty (ESRCH), so a reused id is never signalled.
    armed: bool,
}

impl ProcessGroup {
    pub(crate) fn new(pid: u32) -> Option<Self> {
        let pgid = i32::try_from(pid).ok().filter(|pid| *pid > 0)?;
        Some(Self {
            pgid: Pid::from_raw(pgid),
            armed: true,
        })
    }

    fn signal(&mut self, signal: Signal) {
        if !self.armed {
            return;
        }
        match killpg(self.pgid, signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => self.armed = false,
            Err(error) => warn!(pgid = self.pgid.as_raw(), %signal, %error, "Could not signal process group."),
        }
    }

    /// Whether any process (a zombie included) is still in the group.
    fn is_alive(&mut self) -> bool {
        if !self.armed {
            return false;
        }
        match killpg(self.pgid, None) {
            Err(Errno::ESRCH) => {
                self.armed = false;
                false
            }
            Ok(()) | Err(_) => true,
        }
    }

    /// Waits until the group is empty or `deadline`; then sends SIGKILL to what is left.
    /// Returns whether SIGKILL was sent.
    async fn kill_at(&mut self, deadline: Instant) -> bool {
        while self.is_alive() {
            let now = Instant::now();
            if now >= deadline {
                self.signal(Signal::SIGKILL);
                self.armed = false;
                return true;
            }
            sleep(GROUP_POLL.min(deadline - now)).await;
        }
        false
    }

    /// Stops the whole group: SIGTERM, up to `grace` for the leader and every other member to
    /// exit, then SIGKILL. Returns the leader's exit status and whether SIGKILL was sent.
    pub(crate) async fn stop(
        &mut self,
        leader: &mut Child,
        grace: Duration,
    ) -> (Option<std::process::ExitStatus>, bool) {
        let deadline = Instant::now() + grace;
        self.signal(Signal::SIGTERM);
        let (status, mut killed) = match tokio::time::timeout_at(deadline, leader.wait()).await {
            Ok(status) => (status.ok(), false),
            Err(_elapsed) => {
                self.signal(Signal::SIGKILL);
                (leader.wait().await.ok(), true)
            }
        };
        killed |= self.kill_at(deadline).await;
        (status, killed)
    }

    /// Cleans up after the leader exited by itself: members it left behind get SIGTERM, then
    /// SIGKILL after `grace`, so a restart never runs beside the previous run's processes.
    /// Returns whether SIGKILL was sent.
    pub(crate) async fn reap_leftovers(&mut self, grace: Duration) -> bool {
        if !self.is_alive() {
            return false;
        }
        let deadline = Instant::now() + grace;
        self.signal(Signal::SIGTERM);
        self.kill_at(deadline).await
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}
