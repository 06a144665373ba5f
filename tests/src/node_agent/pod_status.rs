//! A pod's status as the kubelet reports it, from what the node knows of its one container.
//!
//! The agent applies this whole status with server-side apply under its own field manager, so
//! what it stops reporting (a `waiting` state once the container runs) is removed, and what
//! others own (the scheduler's `PodScheduled` condition) is kept.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

pub mod reason {
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
    pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
    pub const COMPLETED: &str = "Completed";
    pub const ERROR: &str = "Error";
    pub const START_ERROR: &str = "StartError";
    pub const CONTAINER_STATUS_UNKNOWN: &str = "ContainerStatusUnknown";
    pub const CONTAINERS_NOT_READY: &str = "ContainersNotReady";
    pub const POD_COMPLETED: &str = "PodCompleted";
    /// Pod-level reason for a pod whose process a previous agent ran and this one cannot see.
    pub const NODE_AGENT_RESTARTED: &str = "NodeAgentRestarted";
}

pub mod condition {
    pub const READY_TO_START_CONTAINERS: &str = "PodReadyToStartContainers";
    pub const INITIALIZED: &str = "Initialized";
    pub const CONTAINERS_READY: &str = "ContainersReady";
    pub const READY: &str = "Ready";
}

/// What the node knows of a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerView {
    Waiting { reason: String, message: String },
    Running { container_id: String, started_at: Timestamp },
    Terminated(Termination),
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Termination {
    /// A process that ran and exited: `Completed` on 0, `Error` otherwise. A signal is reported
    /// as the shell and container runtimes do, as exit code 128 + signal.
    pub fn exited(
        exit: Exit,
        message: Option<String>,
        started_at: Timestamp,
        finished_at: Timestamp,
        id: String,
    ) -> Self {
        let reason = if exit.code == 0 { reason::COMPLETED } else { reason::ERROR };
        Self {
            exit_code: exit.code,
            signal: exit.signal,
            reason: reason.into(),
            message,
            started_at: Some(started_at),
            finished_at,
            container_id: Some(id),
        }
    }
}

/// A process's exit: its code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self { code, signal: None },
            (None, Some(sig)) => Self { code: 128 + sig, signal: Some(sig) },
            (None, None) => Self { code: -1, signal: None },
        }
    }
}

/// Everything a pod status is made from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    pub start_time: Timestamp,
    pub image_id: &'a str,
    pub container: &'a ContainerView,
    pub now: Timestamp,
}

/// The pod phase for a pod whose one container is in `view` (restartPolicy is treated as Never).
pub fn phase_of(view: &ContainerView) -> &'static str {
    match view {
        ContainerView::Waiting { .. } => phase::PENDING,
        ContainerView::Running { .. } => phase::RUNNING,
        ContainerView::Terminated(t) if t.exit_code == 0 => phase::SUCCEEDED,
        ContainerView::Terminated(_) => phase::FAILED,
    }
}

pub fn is_terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some(phase::SUCCEEDED | phase::FAILED))
}

/// Whether some node agent started this pod's container (it reported it running or ended).
pub fn was_started(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    let started =
        |c: &ContainerStatus| c.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    status.phase.as_deref() == Some(phase::RUNNING) || status.container_statuses.iter().flatten().any(started)
}

/// The status of a pod whose container is in `input.container`.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let view = input.container;
    let phase = phase_of(view);
    let terminal = matches!(phase, phase::SUCCEEDED | phase::FAILED);
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let name = container.map(|c| c.name.clone()).unwrap_or_default();
    let ready = matches!(view, ContainerView::Running { .. });

    let (state, container_id) = match view {
        ContainerView::Waiting { reason, message } => {
            let waiting =
                ContainerStateWaiting { reason: Some(reason.clone()), message: Some(message.clone()) };
            (ContainerState { waiting: Some(waiting), ..Default::default() }, None)
        }
        ContainerView::Running { container_id, started_at } => {
            let running = ContainerStateRunning { started_at: Some(Time(*started_at)) };
            (ContainerState { running: Some(running), ..Default::default() }, Some(container_id.clone()))
        }
        ContainerView::Terminated(t) => {
            let terminated = ContainerStateTerminated {
                container_id: t.container_id.clone(),
                exit_code: t.exit_code,
                signal: t.signal,
                reason: Some(t.reason.clone()),
                message: t.message.clone().filter(|m| !m.is_empty()),
                started_at: t.started_at.map(Time),
                finished_at: Some(Time(t.finished_at)),
            };
            (ContainerState { terminated: Some(terminated), ..Default::default() }, t.container_id.clone())
        }
    };
    let container_status = ContainerStatus {
        name: name.clone(),
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        image_id: input.image_id.to_string(),
        container_id,
        ready,
        started: Some(ready),
        restart_count: 0,
        state: Some(state),
        ..Default::default()
    };

    // Not ready: a finished pod says so; a pod whose container does not run names it.
    let (not_ready_reason, not_ready_message) = if terminal {
        (reason::POD_COMPLETED, None)
    } else {
        (reason::CONTAINERS_NOT_READY, Some(format!("containers with unready status: [{name}]")))
    };
    let conditions = Conditions { pod, now: input.now };
    let readiness = |kind: &str| {
        if ready {
            conditions.make(kind, true, None, None)
        } else {
            conditions.make(kind, false, Some(not_ready_reason.to_string()), not_ready_message.clone())
        }
    };
    PodStatus {
        phase: Some(phase.into()),
        observed_generation: pod.metadata.generation,
        conditions: Some(vec![
            conditions.make(condition::READY_TO_START_CONTAINERS, !terminal, None, None),
            conditions.make(condition::INITIALIZED, true, None, None),
            readiness(condition::READY),
            readiness(condition::CONTAINERS_READY),
        ]),
        host_ip: Some(input.host_ip.into()),
        host_ips: Some(vec![HostIP { ip: input.host_ip.into() }]),
        pod_ip: input.pod_ip.map(Into::into),
        pod_ips: input.pod_ip.map(|ip| vec![PodIP { ip: ip.into() }]),
        start_time: Some(Time(input.start_time)),
        container_statuses: Some(vec![container_status]),
        ..Default::default()
    }
}

/// The status of a pod that a previous agent started and this one has no process for: Failed,
/// as the kubelet reports a container it cannot find (exit code 137, `ContainerStatusUnknown`).
/// Addresses and start time are kept from the pod's last status.
pub fn lost_status(pod: &Pod, image_id: &str, now: Timestamp) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let old_container = old.container_statuses.iter().flatten().next();
    let started_at = old_container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running.as_ref().and_then(|r| r.started_at.clone()))
        .map(|t| t.0);
    let container_id = old_container.and_then(|c| c.container_id.clone());
    let view = ContainerView::Terminated(Termination {
        exit_code: 137,
        signal: None,
        reason: reason::CONTAINER_STATUS_UNKNOWN.into(),
        message: Some("The container could not be located when the pod was terminated".into()),
        started_at,
        finished_at: now,
        container_id,
    });
    let input = StatusInput {
        pod,
        pod_ip: old.pod_ip.as_deref(),
        host_ip: old.host_ip.as_deref().unwrap_or("127.0.0.1"),
        start_time: old.start_time.map_or(now, |t| t.0),
        image_id,
        container: &view,
        now,
    };
    PodStatus {
        reason: Some(reason::NODE_AGENT_RESTARTED.into()),
        message: Some("The node agent restarted and lost this pod's process".into()),
        ..pod_status(&input)
    }
}

/// Builds conditions, keeping a condition's `lastTransitionTime` while its status stays.
struct Conditions<'a> {
    pod: &'a Pod,
    now: Timestamp,
}

impl Conditions<'_> {
    fn make(
        &self,
        kind: &str,
        status: bool,
        reason: Option<String>,
        message: Option<String>,
    ) -> PodCondition {
        let status = if status { "True" } else { "False" };
        let existing = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        let same = existing.into_iter().flatten().find(|c| c.type_ == kind && c.status == status);
        PodCondition {
            type_: kind.into(),
            status: status.into(),
            reason,
            message,
            observed_generation: self.pod.metadata.generation,
            last_transition_time: Some(
                same.and_then(|c| c.last_transition_time.clone()).unwrap_or(Time(self.now)),
            ),
            last_probe_time: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::fixtures::PodBuilder;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid time")
    }

    fn status_of(pod: &Pod, view: &ContainerView, now: i64) -> PodStatus {
        let input = StatusInput {
            pod,
            pod_ip: Some("127.1.0.2"),
            host_ip: "127.0.0.1",
            start_time: t(10),
            image_id: "barge-local:///bin/sh",
            container: view,
            now: t(now),
        };
        pod_status(&input)
    }

    fn cond<'s>(s: &'s PodStatus, kind: &str) -> &'s PodCondition {
        s.conditions.iter().flatten().find(|c| c.type_ == kind).expect("condition present")
    }

    fn state(s: &PodStatus) -> ContainerState {
        s.container_statuses.as_ref().expect("statuses")[0].state.clone().expect("state")
    }

    #[test]
    fn a_config_error_keeps_the_pod_pending_with_the_reason_on_its_container() {
        let pod = PodBuilder::new("p").build();
        let view = ContainerView::Waiting {
            reason: reason::CREATE_CONTAINER_CONFIG_ERROR.into(),
            message: r#"secret "creds" not found"#.into(),
        };
        let s = status_of(&pod, &view, 20);
        assert_eq!(s.phase.as_deref(), Some(phase::PENDING));
        let waiting = state(&s).waiting.expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CreateContainerConfigError"));
        assert_eq!(waiting.message.as_deref(), Some(r#"secret "creds" not found"#));
        assert_eq!(cond(&s, condition::READY).reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            cond(&s, condition::READY).message.as_deref(),
            Some("containers with unready status: [main]")
        );
        assert_eq!(cond(&s, condition::READY_TO_START_CONTAINERS).status, "True");
    }

    #[test]
    fn a_running_container_makes_the_pod_running_and_ready() {
        let pod = PodBuilder::new("p").generation(3).build();
        let view = ContainerView::Running { container_id: "barge://42".into(), started_at: t(11) };
        let s = status_of(&pod, &view, 20);
        assert_eq!(s.phase.as_deref(), Some(phase::RUNNING));
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.2"));
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!((c.ready, c.started, c.restart_count), (true, Some(true), 0));
        assert_eq!(c.container_id.as_deref(), Some("barge://42"));
        for kind in [condition::READY, condition::CONTAINERS_READY, condition::INITIALIZED] {
            assert_eq!(cond(&s, kind).status, "True", "{kind}");
        }
    }

    #[test]
    fn an_exit_code_decides_between_succeeded_and_failed() {
        let pod = PodBuilder::new("p").build();
        let ended = |code| {
            let exit = Exit { code, signal: None };
            ContainerView::Terminated(Termination::exited(
                exit,
                Some("bye".into()),
                t(11),
                t(12),
                "barge://7".into(),
            ))
        };
        let s = status_of(&pod, &ended(3), 20);
        assert_eq!(s.phase.as_deref(), Some(phase::FAILED));
        let term = state(&s).terminated.expect("terminated");
        assert_eq!(
            (term.exit_code, term.reason.as_deref(), term.message.as_deref()),
            (3, Some("Error"), Some("bye"))
        );
        assert_eq!(cond(&s, condition::READY).reason.as_deref(), Some("PodCompleted"));
        assert_eq!(cond(&s, condition::READY_TO_START_CONTAINERS).status, "False");
        let s = status_of(&pod, &ended(0), 20);
        assert_eq!(s.phase.as_deref(), Some(phase::SUCCEEDED));
        assert_eq!(state(&s).terminated.expect("terminated").reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_stays() {
        let mut pod = PodBuilder::new("p").build();
        let view = ContainerView::Running { container_id: "barge://1".into(), started_at: t(11) };
        pod.status = Some(status_of(&pod, &view, 20));
        let again = status_of(&pod, &view, 50);
        assert_eq!(cond(&again, condition::READY).last_transition_time, Some(Time(t(20))));
        let ended = ContainerView::Terminated(Termination::exited(
            Exit { code: 0, signal: None },
            None,
            t(11),
            t(60),
            "barge://1".into(),
        ));
        let done = status_of(&pod, &ended, 60);
        assert_eq!(cond(&done, condition::READY).last_transition_time, Some(Time(t(60))));
        assert_eq!(cond(&done, condition::INITIALIZED).last_transition_time, Some(Time(t(20))));
    }

    #[test]
    fn a_signal_is_reported_as_128_plus_its_number() {
        use std::os::unix::process::ExitStatusExt;
        let killed = Exit::from_status(std::process::ExitStatus::from_raw(9));
        assert_eq!(killed, Exit { code: 137, signal: Some(9) });
        let exited = Exit::from_status(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!(exited, Exit { code: 3, signal: None });
    }

    #[test]
    fn a_lost_pod_fails_but_keeps_its_address_and_start_time() {
        let mut pod = PodBuilder::new("p").build();
        let view = ContainerView::Running { container_id: "barge://5".into(), started_at: t(11) };
        pod.status = Some(status_of(&pod, &view, 20));
        assert!(was_started(&pod));
        let s = lost_status(&pod, "img", t(100));
        assert_eq!(s.phase.as_deref(), Some(phase::FAILED));
        assert_eq!(s.reason.as_deref(), Some(reason::NODE_AGENT_RESTARTED));
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.2"));
        assert_eq!(s.start_time, Some(Time(t(10))));
        let term = state(&s).terminated.expect("terminated");
        assert_eq!((term.exit_code, term.reason.as_deref()), (137, Some("ContainerStatusUnknown")));
        assert_eq!(term.container_id.as_deref(), Some("barge://5"));
    }

    #[test]
    fn a_pod_never_started_is_not_lost() {
        let mut pod = PodBuilder::new("p").build();
        assert!(!was_started(&pod));
        let view = ContainerView::Waiting { reason: "ErrImagePull".into(), message: "m".into() };
        pod.status = Some(status_of(&pod, &view, 20));
        assert!(!was_started(&pod));
        assert!(!is_terminal(&pod));
    }
}
