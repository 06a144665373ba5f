//! One pod's life on this node, in its own task: prepare (image, env, folders), run, report,
//! stop on deletion, and remove the pod once its process is gone.
//!
//! Assumptions: restartPolicy is treated as Never; only the first container runs (init
//! containers and further containers are ignored with a warning).
//! Guarantees: a pod's process is stopped (TERM to its group, its grace period, KILL) before
//! its terminated status is reported and before the pod is removed; a pod's IP is freed only
//! once its process is gone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::env::{self, PodFacts};
use super::images::Images;
use super::ip_pool::IpPool;
use super::launch::{Launch, LaunchInput, launch};
use super::node::HOST_IP;
use super::pod_api::{PodApi, Stop};
use super::pod_dir::{Mounts, PodDir};
use super::pod_status::{
    self, ContainerView, Exit, StatusInput, Termination, is_terminal, lost_status, reason, was_started,
};
use super::process::{Groups, Process};
use super::{now, sources, termination};

/// How often a pod that cannot start (missing Secret, unknown image) is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long pods' processes get to exit after TERM when the agent itself stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What every pod's worker shares.
pub struct Context {
    pub client: Client,
    pub state_dir: PathBuf,
    pub images: Images,
    /// The agent's variables that pods inherit, read once at start.
    pub inherited_env: Vec<(String, String)>,
    pub ips: Mutex<IpPool>,
    /// Every pod process's group, for the agent's last sweep.
    pub groups: Arc<Groups>,
    pub shutdown: CancellationToken,
}

impl Context {
    fn allocate_ip(&self) -> Option<Ipv4Addr> {
        self.ips.lock().unwrap_or_else(PoisonError::into_inner).allocate()
    }

    fn free_ip(&self, ip: Ipv4Addr) {
        self.ips.lock().unwrap_or_else(PoisonError::into_inner).free(ip);
    }
}

/// Runs the pod whose latest state `pods` holds, until it is removed, gone, or the agent stops.
/// `adopted`: the pod was bound to this node before the agent started.
pub async fn run(ctx: Arc<Context>, pods: watch::Receiver<Pod>, adopted: bool) {
    let pod = pods.borrow().clone();
    let api = PodApi::new(ctx.client.clone(), &pod, ctx.shutdown.clone());
    let mut worker = Worker {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        ctx,
        pods,
        api,
        image_id: String::new(),
    };
    match worker.live(adopted).await {
        Ok(()) | Err(Stop::Shutdown) => {}
        Err(Stop::Gone) => tracing::info!(namespace = %worker.namespace, pod = %worker.name, "pod gone"),
    }
}

struct Worker {
    ctx: Arc<Context>,
    pods: watch::Receiver<Pod>,
    api: PodApi,
    namespace: String,
    name: String,
    image_id: String,
}

/// How a pod's time in its sandbox ended.
enum Ended {
    /// The process exited (or never started); the pod waits for its deletion.
    Exited,
    /// The pod was deleted and its process stopped; remove it now.
    Deleted,
}

/// A pod's sandbox: its IP and when the node took it on.
struct Sandbox {
    ip: String,
    start_time: Timestamp,
}

/// A container ready to start.
struct Prepared {
    launch: Launch,
    dir: PodDir,
    mounts: Mounts,
}

impl Worker {
    fn latest(&self) -> Pod {
        self.pods.borrow().clone()
    }

    async fn live(&mut self, adopted: bool) -> Result<(), Stop> {
        let pod = self.latest();
        if is_terminal(&pod) {
            return self.linger().await;
        }
        if adopted && was_started(&pod) {
            tracing::warn!(namespace = %self.namespace, pod = %self.name, "pod ran under a previous agent; marking it Failed");
            self.api.report(lost_status(&pod, "", now())).await?;
            return self.linger().await;
        }
        if deleting(&pod) {
            return self.api.delete_now().await;
        }
        warn_unsupported(&pod);
        let ip = loop {
            match self.ctx.allocate_ip() {
                Some(ip) => break ip,
                None => {
                    tracing::error!(pod = %self.name, "no free pod IP; retrying");
                    self.wait_for_retry().await?;
                }
            }
        };
        let ended = self.in_sandbox(ip).await;
        self.ctx.free_ip(ip);
        match ended? {
            Ended::Exited => self.linger().await,
            Ended::Deleted => self.api.delete_now().await,
        }
    }

    /// Waits for the pod's deletion, then removes it.
    async fn linger(&mut self) -> Result<(), Stop> {
        while !deleting(&self.latest()) {
            self.wait_change(None).await?;
        }
        self.api.delete_now().await
    }

    /// Until the pod changes (`Ok`), `timeout` passes (`Ok`), the pod is gone or the agent stops.
    async fn wait_change(&mut self, timeout: Option<Duration>) -> Result<(), Stop> {
        let timer = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.ctx.shutdown.cancelled() => Err(Stop::Shutdown),
            changed = self.pods.changed() => changed.map_err(|_closed| Stop::Gone),
            () = timer => Ok(()),
        }
    }

    /// Waits out [`RETRY_INTERVAL`], or less if the pod is being deleted. (Every status the agent
    /// reports comes back as a change of the pod, so a change alone is no reason to retry.)
    async fn wait_for_retry(&mut self) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + RETRY_INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || deleting(&self.latest()) {
                return Ok(());
            }
            self.wait_change(Some(left)).await?;
        }
    }

    async fn report(&mut self, sandbox: &Sandbox, view: &ContainerView) -> Result<(), Stop> {
        let pod = self.latest();
        let input = StatusInput {
            pod: &pod,
            pod_ip: Some(&sandbox.ip),
            host_ip: HOST_IP,
            start_time: sandbox.start_time,
            image_id: &self.image_id,
            container: view,
            now: now(),
        };
        self.api.report(pod_status::pod_status(&input)).await
    }

    async fn in_sandbox(&mut self, ip: Ipv4Addr) -> Result<Ended, Stop> {
        let sandbox = Sandbox { ip: ip.to_string(), start_time: now() };
        let mut attempt = 0;
        let mut last_waiting = None;
        let prepared = loop {
            let pod = self.latest();
            if deleting(&pod) {
                return Ok(Ended::Deleted);
            }
            match self.prepare(&pod, &sandbox, attempt).await {
                Ok(prepared) => break prepared,
                Err(view) => {
                    if last_waiting.as_ref() != Some(&view) {
                        tracing::warn!(namespace = %self.namespace, pod = %self.name, ?view, "container cannot start yet");
                    }
                    self.report(&sandbox, &view).await?;
                    last_waiting = Some(view);
                    attempt += 1;
                    self.wait_for_retry().await?;
                }
            }
        };
        let log = prepared.dir.container_log();
        let mut process = match Process::spawn(&prepared.launch, &log, &self.ctx.groups) {
            Ok(p) => p,
            Err(e) => {
                let program = prepared.launch.program.display();
                tracing::error!(namespace = %self.namespace, pod = %self.name, %program, error = %e, "cannot start");
                let message = format!("failed to start {program}: {e}");
                self.report(&sandbox, &start_error(message)).await?;
                return Ok(Ended::Exited);
            }
        };
        let (pid, id, started_at) = (process.pid(), process.container_id(), process.started_at);
        tracing::info!(namespace = %self.namespace, pod = %self.name, pid, program = %prepared.launch.program.display(), ip = %sandbox.ip, "pod started");
        let running = ContainerView::Running { container_id: id.clone(), started_at };
        let run = self.supervise(&mut process, &sandbox, &running).await;
        let (status, ended) = match run {
            Supervised::Exited(status) => {
                process.reap_group();
                (status, Ok(Ended::Exited))
            }
            Supervised::Stop(grace, outcome) => {
                tracing::info!(namespace = %self.namespace, pod = %self.name, pid, grace_s = grace.as_secs(), "stopping pod");
                (process.stop(grace, &self.ctx.shutdown).await, outcome)
            }
        };
        let exit = match status {
            Ok(status) => Exit::from_status(status),
            Err(e) => {
                tracing::error!(pod = %self.name, pid, error = %e, "cannot wait for the process");
                Exit { code: -1, signal: None }
            }
        };
        tracing::info!(namespace = %self.namespace, pod = %self.name, pid, exit_code = exit.code, signal = ?exit.signal, "pod process ended");
        let ended = ended?;
        let container = first_container(&self.latest());
        let policy = container.as_ref().and_then(|c| c.termination_message_policy.clone());
        let message = termination::read(&prepared.mounts.termination_log, &log, policy.as_deref(), exit.code);
        let view = ContainerView::Terminated(Termination::exited(exit, Some(message), started_at, now(), id));
        self.report(&sandbox, &view).await?;
        Ok(ended)
    }

    /// Reports the process running and watches it and its pod until one of them ends.
    async fn supervise(
        &mut self,
        process: &mut Process,
        sandbox: &Sandbox,
        running: &ContainerView,
    ) -> Supervised {
        if let Err(stop) = self.report(sandbox, running).await {
            return Supervised::Stop(self.grace_for(stop), Err(stop));
        }
        loop {
            tokio::select! {
                status = process.wait() => return Supervised::Exited(status),
                changed = self.wait_change(None) => match changed {
                    Ok(()) if deleting(&self.latest()) => {
                        return Supervised::Stop(grace_period(&self.latest()), Ok(Ended::Deleted));
                    }
                    Ok(()) => {}
                    Err(stop) => return Supervised::Stop(self.grace_for(stop), Err(stop)),
                },
            }
        }
    }

    fn grace_for(&self, stop: Stop) -> Duration {
        match stop {
            Stop::Shutdown => SHUTDOWN_GRACE,
            Stop::Gone => grace_period(&self.latest()),
        }
    }

    /// Everything a start needs, or the waiting state that says why the container cannot start.
    async fn prepare(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        attempt: u32,
    ) -> Result<Prepared, ContainerView> {
        let container = first_container(pod)
            .ok_or_else(|| waiting("CreateContainerError", "the pod has no container"))?;
        let image = container.image.clone().unwrap_or_default();
        let Some(binary) = self.ctx.images.binary_for(&image).map(Path::to_path_buf) else {
            let message = format!("image {image:?} is not available on this test node");
            return Err(match attempt {
                0 => waiting(reason::ERR_IMAGE_PULL, &message),
                _ => waiting(
                    reason::IMAGE_PULL_BACK_OFF,
                    &format!("Back-off pulling image {image:?}: ErrImagePull: {message}"),
                ),
            });
        };
        self.image_id = format!("barge-local://{}", binary.display());

        let refs = env::references(&container);
        let sources = sources::fetch(&self.ctx.client, &self.namespace, &refs).await;
        let facts = PodFacts { pod, pod_ip: &sandbox.ip, host_ip: HOST_IP };
        let env = env::resolve(&container, facts, &sources)
            .map_err(|e| waiting(reason::CREATE_CONTAINER_CONFIG_ERROR, &e.to_string()))?;

        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let dir = PodDir::new(&self.ctx.state_dir, &self.namespace, &self.name, uid);
        let mounts = Mounts::for_container(&dir, pod, &container);
        if attempt == 0 {
            for ignored in &mounts.ignored {
                tracing::warn!(namespace = %self.namespace, pod = %self.name, "{ignored}");
            }
        }
        make_pod_dir(&dir, &mounts).map_err(|e| waiting("CreateContainerError", &e))?;
        let launch = launch(LaunchInput {
            container: &container,
            binary: &binary,
            env: &env,
            mounts: &mounts,
            dir: &dir,
            pod_name: &self.name,
            inherited: &self.ctx.inherited_env,
        });
        Ok(Prepared { launch, dir, mounts })
    }
}

/// How supervision ended: the process exited by itself, or it must be stopped (with this grace
/// period), after which the pod is removed (`Ok(Deleted)`) or the worker stops (`Err`).
enum Supervised {
    Exited(std::io::Result<std::process::ExitStatus>),
    Stop(Duration, Result<Ended, Stop>),
}

fn waiting(reason: &str, message: &str) -> ContainerView {
    ContainerView::Waiting { reason: reason.into(), message: message.into() }
}

/// A process that could not be started, reported as the kubelet reports a failed exec.
fn start_error(message: String) -> ContainerView {
    let now = now();
    ContainerView::Terminated(Termination {
        exit_code: 128,
        signal: None,
        reason: reason::START_ERROR.into(),
        message: Some(message),
        started_at: Some(now),
        finished_at: now,
        container_id: None,
    })
}

fn first_container(pod: &Pod) -> Option<Container> {
    pod.spec.as_ref().and_then(|s| s.containers.first().cloned())
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's grace period: the one its deletion set, else its spec's, else 30 s.
fn grace_period(pod: &Pod) -> Duration {
    let spec = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
    let secs = pod.metadata.deletion_grace_period_seconds.or(spec).unwrap_or(DEFAULT_GRACE_SECONDS);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn warn_unsupported(pod: &Pod) {
    let Some(spec) = &pod.spec else { return };
    let pod = pod.metadata.name.as_deref().unwrap_or_default();
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        tracing::warn!(%pod, "init containers are ignored on this test node");
    }
    if spec.containers.len() > 1 {
        tracing::warn!(%pod, "only the first container runs on this test node");
    }
    if spec.restart_policy.as_deref().is_some_and(|p| p != "Never") {
        tracing::warn!(%pod, "restartPolicy is treated as Never on this test node");
    }
}

/// Creates the pod's folder, its volumes and an empty termination message file.
fn make_pod_dir(dir: &PodDir, mounts: &Mounts) -> Result<(), String> {
    let io = |path: &Path, e: std::io::Error| format!("cannot create {}: {e}", path.display());
    std::fs::create_dir_all(dir.root()).map_err(|e| io(dir.root(), e))?;
    for d in &mounts.dirs {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    std::fs::File::create(&mounts.termination_log).map_err(|e| io(&mounts.termination_log, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::fixtures::PodBuilder;

    #[test]
    fn the_grace_period_comes_from_the_deletion_then_the_spec_then_the_default() {
        let mut pod = PodBuilder::new("p").build();
        assert_eq!(grace_period(&pod), Duration::from_secs(30));
        pod.spec.as_mut().expect("spec").termination_grace_period_seconds = Some(120);
        assert_eq!(grace_period(&pod), Duration::from_secs(120));
        pod.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(grace_period(&pod), Duration::ZERO);
    }
}
