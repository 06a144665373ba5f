//! The status conditions, derived from the phase as Kubernetes conventions and GitOps tools
//! expect: `Complete`/`Failed` when it ends, `Ready` while it runs or once it succeeded,
//! `Stalled` on failure, `Suspended`.

use barge_api::batchjob::{Phase, condition, reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Why the job is in its phase: the `reason` and `message` of its deciding condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub reason: &'static str,
    pub message: String,
}

impl Why {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Why { reason, message: message.into() }
    }
}

/// The five conditions for `phase`. `lastTransitionTime` is kept from `old` when a condition's
/// status did not change, so an unchanged job produces an identical list.
pub fn conditions(
    phase: Phase,
    why: &Why,
    generation: Option<i64>,
    old: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    let r = why.reason;
    let m = why.message.as_str();
    let (complete, failed, ready, stalled, suspended) = match phase {
        Phase::Succeeded => (
            t(r, m),
            f(reason::SUCCEEDED, ""),
            t(r, m),
            f(reason::NOT_FAILED, ""),
            f(reason::NOT_SUSPENDED, ""),
        ),
        Phase::Failed | Phase::Expired => (f(r, m), t(r, m), f(r, m), t(r, m), f(reason::NOT_SUSPENDED, "")),
        Phase::Cancelled => (f(r, m), f(r, m), f(r, m), f(r, m), f(reason::NOT_SUSPENDED, "")),
        Phase::Suspended => (f(r, m), f(r, m), f(r, m), f(reason::NOT_FAILED, ""), t(r, m)),
        // Pods that are not running yet (starting, or waiting for a node) do not make it Ready.
        Phase::Running
            if matches!(
                r,
                reason::PODS_STARTING
                    | reason::UNSCHEDULABLE
                    | reason::SUSPENDED
                    | reason::POD_CREATE_REFUSED
            ) =>
        {
            (
                f(reason::NOT_FINISHED, ""),
                f(reason::NOT_FAILED, ""),
                f(r, m),
                f(reason::NOT_FAILED, ""),
                f(reason::NOT_SUSPENDED, ""),
            )
        }
        Phase::Running | Phase::Finalizing => (
            f(reason::NOT_FINISHED, ""),
            f(reason::NOT_FAILED, ""),
            t(r, m),
            f(reason::NOT_FAILED, ""),
            f(reason::NOT_SUSPENDED, ""),
        ),
        Phase::Pending => (
            f(reason::NOT_FINISHED, ""),
            f(reason::NOT_FAILED, ""),
            f(r, m),
            f(reason::NOT_FAILED, ""),
            f(reason::NOT_SUSPENDED, ""),
        ),
    };
    [
        (condition::COMPLETE, complete),
        (condition::FAILED, failed),
        (condition::READY, ready),
        (condition::STALLED, stalled),
        (condition::SUSPENDED, suspended),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let prior = old.iter().find(|c| c.type_ == type_);
        let last_transition_time = match prior {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: generation,
        }
    })
    .collect()
}

fn t<'a>(reason: &'a str, message: &'a str) -> (&'static str, &'a str, &'a str) {
    ("True", reason, message)
}

fn f<'a>(reason: &'a str, message: &'a str) -> (&'static str, &'a str, &'a str) {
    ("False", reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(cs: &'a [Condition], type_: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == type_).expect("condition present")
    }

    #[test]
    fn every_condition_has_a_reason_and_the_generation() {
        for phase in [
            Phase::Pending,
            Phase::Running,
            Phase::Finalizing,
            Phase::Suspended,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Cancelled,
            Phase::Expired,
        ] {
            let cs = conditions(phase, &Why::new(reason::RUNNING, "m"), Some(3), &[], Timestamp::UNIX_EPOCH);
            assert_eq!(cs.len(), 5);
            for c in &cs {
                assert!(!c.reason.is_empty(), "{phase:?} {}", c.type_);
                assert_eq!(c.observed_generation, Some(3));
            }
        }
    }

    #[test]
    fn ready_is_true_while_running_and_after_success_and_stalled_on_failure() {
        let now = Timestamp::UNIX_EPOCH;
        let running = conditions(Phase::Running, &Why::new(reason::RUNNING, ""), None, &[], now);
        assert_eq!(find(&running, condition::READY).status, "True");
        assert_eq!(find(&running, condition::COMPLETE).status, "False");
        let done = conditions(Phase::Succeeded, &Why::new(reason::SUCCEEDED, "ok"), None, &[], now);
        assert_eq!(find(&done, condition::COMPLETE).status, "True");
        assert_eq!(find(&done, condition::READY).status, "True");
        let failed =
            conditions(Phase::Failed, &Why::new(reason::INVALID_SPEC, "spec.x: bad"), None, &[], now);
        assert_eq!(find(&failed, condition::FAILED).status, "True");
        assert_eq!(find(&failed, condition::STALLED).status, "True");
        assert_eq!(find(&failed, condition::FAILED).message, "spec.x: bad");
        let suspended = conditions(Phase::Suspended, &Why::new(reason::SUSPENDED, ""), None, &[], now);
        assert_eq!(find(&suspended, condition::SUSPENDED).status, "True");
    }

    #[test]
    fn transition_times_move_only_when_the_status_flips() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(100).expect("valid");
        let first = conditions(Phase::Running, &Why::new(reason::RUNNING, ""), None, &[], t0);
        let again = conditions(Phase::Running, &Why::new(reason::RUNNING, ""), None, &first, t1);
        assert_eq!(first, again);
        let done = conditions(Phase::Succeeded, &Why::new(reason::SUCCEEDED, ""), None, &again, t1);
        assert_eq!(find(&done, condition::COMPLETE).last_transition_time, Time(t1));
        assert_eq!(find(&done, condition::READY).last_transition_time, Time(t0));
    }
}
