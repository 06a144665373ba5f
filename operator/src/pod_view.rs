//! What the operator reads from a pod: its phase, times, exit and termination message, and why
//! it cannot start. Pure functions over the Pod object.

use barge_api::TerminationMessage;
use barge_api::batchjob::{labels, reason};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::jiff::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

pub fn phase(pod: &Pod) -> PodPhase {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Pending") | None => PodPhase::Pending,
        Some(_) => PodPhase::Unknown,
    }
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), PodPhase::Succeeded | PodPhase::Failed)
}

pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// The shard a runner pod works on, from its label.
pub fn shard_index(pod: &Pod) -> Option<u32> {
    pod.metadata.labels.as_ref()?.get(labels::SHARD)?.parse().ok()
}

pub fn role(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(labels::ROLE).map(String::as_str)
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()
}

/// Seconds the pod's container ran: from its start to its end, or to `now` while it runs.
pub fn runtime_seconds(pod: &Pod, now: Timestamp) -> f64 {
    let status = pod.status.as_ref();
    let started = terminated(pod)
        .and_then(|t| t.started_at.as_ref())
        .or_else(|| {
            status?
                .container_statuses
                .as_ref()?
                .first()?
                .state
                .as_ref()?
                .running
                .as_ref()?
                .started_at
                .as_ref()
        })
        .or_else(|| status?.start_time.as_ref());
    let Some(started) = started else { return 0.0 };
    let end = match terminated(pod).and_then(|t| t.finished_at.as_ref()) {
        Some(t) => t.0,
        None if is_terminal(pod) => return 0.0,
        None => now,
    };
    let secs = end.duration_since(started.0).as_secs_f64();
    secs.max(0.0)
}

/// The runner's final report, when the pod ended and wrote one.
pub fn termination_message(pod: &Pod) -> Option<TerminationMessage> {
    let msg = terminated(pod)?.message.as_deref()?;
    serde_json::from_str(msg.trim()).ok().map(crate::untrusted::termination_message)
}

/// A one-line account of why the pod ended, for status messages.
pub fn exit_summary(pod: &Pod) -> String {
    if let Some(tm) = termination_message(pod)
        && let Some(m) = tm.message
    {
        return m;
    }
    match terminated(pod) {
        Some(t) => {
            let mut s = format!("exit code {}", t.exit_code);
            if let Some(r) = &t.reason {
                s.push_str(&format!(" ({r})"));
            }
            if let Some(m) = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
                let tail: String = m.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
                s.push_str(&format!(": {tail}"));
            }
            s
        }
        None => {
            pod.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_else(|| "the pod failed".into())
        }
    }
}

/// Why a pending pod cannot start, when the cause needs the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
    /// Whether it may clear up by itself (a registry hiccup, a Secret created late): the job
    /// then waits for a while before it fails.
    pub transient: bool,
}

pub fn blocked(pod: &Pod) -> Option<Blocked> {
    let status = pod.status.as_ref()?;
    for cs in status.container_statuses.iter().flatten() {
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let msg = waiting.message.clone().unwrap_or_default();
        let (reason, transient) = match waiting.reason.as_deref() {
            Some("CreateContainerConfigError") if msg.contains("secret") || msg.contains("Secret") => {
                (reason::MISSING_SECRET, true)
            }
            Some("ErrImagePull" | "ImagePullBackOff") => (reason::IMAGE_PULL, true),
            Some("InvalidImageName" | "ErrImageNeverPull") => (reason::IMAGE_PULL, false),
            _ => continue,
        };
        return Some(Blocked { reason, message: format!("pod {}: {msg}", name(pod)), transient });
    }
    None
}

/// When the pod was created (its age bounds how long a transient block is waited out).
pub fn created(pod: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The scheduler's complaint about a pod it cannot place, if any.
pub fn unschedulable(pod: &Pod) -> Option<String> {
    let cond = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?;
    (cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable"))
        .then(|| format!("pod {}: {}", name(pod), cond.message.clone().unwrap_or_default()))
}

/// Where the runner serves `/progress`, once the pod has an IP.
pub fn progress_url(pod: &Pod, port: u16) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
    Some(format!("http://{host}:{port}/progress"))
}
