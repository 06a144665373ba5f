//! A pod's process: started in its own process group, so that a signal reaches everything it
//! started, and stopped as the kubelet stops a container (TERM, a grace period, then KILL).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::launch::Launch;

/// The process groups of every pod process that may still have members, so that the agent can
/// kill them all on its way out, whatever state their workers are in.
#[derive(Debug, Default)]
pub struct Groups(Mutex<BTreeSet<u32>>);

impl Groups {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// KILL to every group still registered; returns how many there were.
    pub fn kill_all(&self) -> usize {
        let groups = std::mem::take(&mut *self.set());
        for pgid in &groups {
            kill_group(*pgid, Signal::SIGKILL);
        }
        groups.len()
    }
}

/// A started process and its group.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: u32,
    groups: Arc<Groups>,
    pub started_at: Timestamp,
}

impl Process {
    /// Starts `launch` with stdout and stderr appended to `log`, and registers its group in
    /// `groups`. Nothing of the agent's environment reaches it but what `launch.env` holds.
    pub fn spawn(launch: &Launch, log: &Path, groups: &Arc<Groups>) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group (pgid = pid), so that signals reach its children too.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let pid =
            child.id().ok_or_else(|| std::io::Error::other("the process exited before it got a pid"))?;
        groups.set().insert(pid);
        Ok(Self { child, pid, groups: groups.clone(), started_at: super::now() })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the pod status shows as the container's id.
    pub fn container_id(&self) -> String {
        format!("barge://{}", self.pid)
    }

    /// Waits for the process to exit; cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `signal` to the process's whole group.
    pub fn signal_group(&self, signal: Signal) {
        kill_group(self.pid, signal);
    }

    /// TERM to the group, up to `grace` for the process to exit, then KILL to the group. An
    /// agent shutdown (`shutdown`) cuts the grace period short.
    pub async fn stop(
        &mut self,
        grace: Duration,
        shutdown: &CancellationToken,
    ) -> std::io::Result<ExitStatus> {
        self.signal_group(Signal::SIGTERM);
        let exited = tokio::select! {
            status = self.child.wait() => Some(status),
            () = tokio::time::sleep(grace) => None,
            () = shutdown.cancelled() => None,
        };
        let status = match exited {
            Some(status) => status,
            None => {
                tracing::info!(pid = self.pid, grace_s = grace.as_secs(), "grace period over, sending KILL");
                self.signal_group(Signal::SIGKILL);
                self.child.wait().await
            }
        };
        self.reap_group();
        status
    }

    /// Kills what the process left behind in its group once it has exited, as tearing down a
    /// container's cgroup would. Linux does not hand out a pid that is still some live group's
    /// id, so while anything of the group lives its id names only it; called right after the
    /// leader is reaped, the window in which a new group could take the id is tiny.
    pub fn reap_group(&self) {
        self.signal_group(Signal::SIGKILL);
        self.groups.set().remove(&self.pid);
    }
}

/// Sends `signal` to process group `pgid`. A group that is already gone is not an error.
fn kill_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if let Err(e) = killpg(Pid::from_raw(raw), signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, %signal, error = %e, "cannot signal the process group");
    }
}
