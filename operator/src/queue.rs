//! Operator-wide queueing: at most `maxRunningJobs` jobs and `maxRunningPods` runner pods at
//! once; waiting jobs start strictly in order of their PriorityClass value (higher first), then
//! creation time.

use k8s_openapi::jiff::Timestamp;

use crate::config::QueueConfig;
use crate::plan::Admission;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Running or finalizing: counts against the limits.
    Holding,
    /// Wants to start.
    Waiting,
    /// Finished, suspended or not wanting to run.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `namespace/name`.
    pub key: String,
    pub priority: i32,
    pub created: Timestamp,
    pub pods: u32,
    pub slot: Slot,
}

/// Whether the job `key` (which is `Waiting` in `entries`) may start now.
pub fn admit(key: &str, entries: &[Entry], limits: QueueConfig) -> Admission {
    let holding: Vec<&Entry> = entries.iter().filter(|e| e.slot == Slot::Holding).collect();
    let mut free_jobs = free(limits.max_running_jobs, holding.len() as u64);
    let mut free_pods = free(limits.max_running_pods, holding.iter().map(|e| u64::from(e.pods)).sum());
    let mut waiting: Vec<&Entry> = entries.iter().filter(|e| e.slot == Slot::Waiting).collect();
    waiting
        .sort_by(|a, b| b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)).then(a.key.cmp(&b.key)));
    for (position, e) in waiting.iter().enumerate() {
        let fits = free_jobs >= 1 && free_pods >= u64::from(e.pods);
        if e.key == key {
            if fits {
                return Admission::Granted;
            }
            let limit = if free_jobs < 1 {
                format!("maxRunningJobs {} reached", limits.max_running_jobs)
            } else {
                format!(
                    "maxRunningPods {} leaves room for {free_pods} more pods, this job needs {}",
                    limits.max_running_pods, e.pods
                )
            };
            return Admission::Queued {
                message: format!(
                    "queued: position {} of {} ({limit}; {} jobs running)",
                    position + 1,
                    waiting.len(),
                    holding.len()
                ),
            };
        }
        if !fits {
            // Strict order: a job ahead that does not fit holds back everyone behind it.
            free_jobs = 0;
            continue;
        }
        free_jobs -= 1;
        free_pods -= u64::from(e.pods);
    }
    // Not in the list (the caller's view is stale): let it start; the next pass corrects it.
    Admission::Granted
}

fn free(limit: u32, used: u64) -> u64 {
    if limit == 0 { u64::MAX } else { u64::from(limit).saturating_sub(used) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, priority: i32, created: i64, pods: u32, slot: Slot) -> Entry {
        Entry {
            key: key.into(),
            priority,
            created: Timestamp::from_second(created).expect("time"),
            pods,
            slot,
        }
    }

    fn limits(jobs: u32, pods: u32) -> QueueConfig {
        QueueConfig { max_running_jobs: jobs, max_running_pods: pods }
    }

    #[test]
    fn no_limits_admit_everyone() {
        let e = [entry("a", 0, 1, 1, Slot::Waiting), entry("b", 0, 2, 1, Slot::Holding)];
        assert_eq!(admit("a", &e, limits(0, 0)), Admission::Granted);
    }

    #[test]
    fn waiting_jobs_start_in_creation_order_up_to_the_job_limit() {
        let e = [
            entry("running", 0, 0, 1, Slot::Holding),
            entry("first", 0, 1, 1, Slot::Waiting),
            entry("second", 0, 2, 1, Slot::Waiting),
            entry("third", 0, 3, 1, Slot::Waiting),
        ];
        assert_eq!(admit("first", &e, limits(3, 0)), Admission::Granted);
        assert_eq!(admit("second", &e, limits(3, 0)), Admission::Granted);
        match admit("third", &e, limits(3, 0)) {
            Admission::Queued { message } => {
                assert!(message.starts_with("queued: position 3 of 3 (maxRunningJobs 3 reached"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn higher_priority_jumps_ahead_of_older_jobs() {
        let e = [entry("old", 0, 1, 1, Slot::Waiting), entry("urgent", 100, 5, 1, Slot::Waiting)];
        assert_eq!(admit("urgent", &e, limits(1, 0)), Admission::Granted);
        assert!(matches!(admit("old", &e, limits(1, 0)), Admission::Queued { .. }));
    }

    #[test]
    fn a_big_job_that_does_not_fit_the_pod_limit_holds_back_those_behind_it() {
        let e = [
            entry("running", 0, 0, 6, Slot::Holding),
            entry("big", 0, 1, 8, Slot::Waiting),
            entry("small", 0, 2, 1, Slot::Waiting),
        ];
        match admit("big", &e, limits(0, 10)) {
            Admission::Queued { message } => assert!(message.contains("maxRunningPods 10"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(admit("small", &e, limits(0, 10)), Admission::Queued { .. }));
    }
}
