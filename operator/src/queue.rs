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

/// The queue's answer for one job, and which job should be reconciled next so the queue keeps
/// moving without waking every job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub admission: Admission,
    /// The next job that may start: woken now rather than at its next periodic requeue.
    pub wake: Option<String>,
}

/// The waiting jobs that may start now, in queue order: a prefix of the ordered queue, cut at
/// the first job that does not fit (strict order: it holds back everyone behind it).
pub fn startable(entries: &[Entry], limits: QueueConfig) -> Vec<String> {
    let holding: Vec<&Entry> = entries.iter().filter(|e| e.slot == Slot::Holding).collect();
    let mut free_jobs = free(limits.max_running_jobs, holding.len() as u64);
    let mut free_pods = free(limits.max_running_pods, holding.iter().map(|e| u64::from(e.pods)).sum());
    let mut out = Vec::new();
    for e in ordered_waiting(entries).into_iter().filter(|e| !never_fits(e, limits)) {
        if free_jobs < 1 || free_pods < u64::from(e.pods) {
            break;
        }
        free_jobs -= 1;
        free_pods -= u64::from(e.pods);
        out.push(e.key.clone());
    }
    out
}

fn ordered_waiting(entries: &[Entry]) -> Vec<&Entry> {
    let mut waiting: Vec<&Entry> = entries.iter().filter(|e| e.slot == Slot::Waiting).collect();
    waiting
        .sort_by(|a, b| b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)).then(a.key.cmp(&b.key)));
    waiting
}

/// Whether the job `key` (which is `Waiting` in `entries`) may start now. Jobs start one at a
/// time in queue order: only the head of the startable jobs is admitted, and it wakes the next.
pub fn admit(key: &str, entries: &[Entry], limits: QueueConfig) -> Verdict {
    let ready = startable(entries, limits);
    if let Some(e) = entries.iter().find(|e| e.key == key)
        && never_fits(e, limits)
    {
        let message = format!(
            "spec.parallelism {} is above the operator's queue.maxRunningPods {}: the job could never start; lower spec.parallelism",
            e.pods, limits.max_running_pods
        );
        return Verdict { admission: Admission::Refused { message }, wake: ready.first().cloned() };
    }
    if ready.first().map(String::as_str) == Some(key) {
        return Verdict { admission: Admission::Granted, wake: ready.get(1).cloned() };
    }
    let waiting = ordered_waiting(entries);
    let Some(position) = waiting.iter().position(|e| e.key == key) else {
        // Not in the list (the caller's view is stale): let it start; the next pass corrects it.
        return Verdict { admission: Admission::Granted, wake: None };
    };
    let holding: Vec<&Entry> = entries.iter().filter(|e| e.slot == Slot::Holding).collect();
    // The position only, not the queue's length: a job's message then changes when a job ahead
    // of it starts, not with every job that joins behind it. (With the length in it, a burst of
    // n jobs rewrote every queued job's status on each arrival, and each write woke its job to
    // plan again: O(n²) writes, seconds of lag at a thousand jobs.)
    let message = if ready.iter().any(|k| k == key) {
        format!("queued: position {}, starting after the jobs ahead of it", position + 1)
    } else {
        // Counting the jobs ahead that may start now: they take their places first.
        let ahead_pods: u64 =
            waiting.iter().filter(|e| ready.contains(&e.key)).map(|e| u64::from(e.pods)).sum();
        let used_pods: u64 = holding.iter().map(|e| u64::from(e.pods)).sum::<u64>() + ahead_pods;
        let used_jobs = (holding.len() + ready.len()) as u64;
        let limit = if limits.max_running_jobs > 0 && used_jobs >= u64::from(limits.max_running_jobs) {
            format!("maxRunningJobs {} reached", limits.max_running_jobs)
        } else if limits.max_running_pods > 0 {
            format!("maxRunningPods {}: {used_pods} pods running or starting", limits.max_running_pods)
        } else {
            "waiting for the jobs ahead of it".to_string()
        };
        format!("queued: position {} ({limit}; {} jobs running)", position + 1, holding.len())
    };
    Verdict { admission: Admission::Queued { message }, wake: ready.first().cloned() }
}

/// A job with more pods than the pod limit would wait forever, and hold back the queue behind
/// it: it is refused instead, and skipped by the queue.
fn never_fits(e: &Entry, limits: QueueConfig) -> bool {
    limits.max_running_pods > 0 && e.pods > limits.max_running_pods
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

    /// A job with more pods than maxRunningPods once waited forever at the head of the queue
    /// and held back every job behind it.
    #[test]
    fn a_job_that_can_never_fit_is_refused_and_does_not_block_the_queue() {
        let e = [entry("huge", 0, 1, 8, Slot::Waiting), entry("small", 0, 2, 2, Slot::Waiting)];
        match admit("huge", &e, limits(0, 4)).admission {
            Admission::Refused { message } => {
                assert!(
                    message.contains("spec.parallelism 8") && message.contains("maxRunningPods 4"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(startable(&e, limits(0, 4)), ["small"]);
        assert_eq!(admit("small", &e, limits(0, 4)).admission, Admission::Granted);
    }

    #[test]
    fn no_limits_admit_everyone() {
        let e = [entry("a", 0, 1, 1, Slot::Waiting), entry("b", 0, 2, 1, Slot::Holding)];
        assert_eq!(admit("a", &e, limits(0, 0)).admission, Admission::Granted);
    }

    #[test]
    fn waiting_jobs_start_in_creation_order_up_to_the_job_limit() {
        let e = [
            entry("running", 0, 0, 1, Slot::Holding),
            entry("first", 0, 1, 1, Slot::Waiting),
            entry("second", 0, 2, 1, Slot::Waiting),
            entry("third", 0, 3, 1, Slot::Waiting),
        ];
        let first = admit("first", &e, limits(3, 0));
        assert_eq!(first, Verdict { admission: Admission::Granted, wake: Some("second".into()) });
        // The second may start too, but only after the first: it wakes the first.
        let second = admit("second", &e, limits(3, 0));
        assert!(matches!(second.admission, Admission::Queued { .. }), "{second:?}");
        assert_eq!(second.wake.as_deref(), Some("first"));
        assert_eq!(startable(&e, limits(3, 0)), ["first", "second"]);
        match admit("third", &e, limits(3, 0)).admission {
            Admission::Queued { message } => {
                assert!(message.starts_with("queued: position 3 (maxRunningJobs 3 reached"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A burst of arrivals must not rewrite every queued job's status on each arrival.
    #[test]
    fn a_queued_jobs_message_stays_when_jobs_join_behind_it() {
        let mut e = vec![entry("running", 0, 0, 1, Slot::Holding), entry("mine", 0, 1, 1, Slot::Waiting)];
        let before = admit("mine", &e, limits(1, 0));
        for i in 0..5 {
            e.push(entry(&format!("later-{i}"), 0, 10 + i, 1, Slot::Waiting));
        }
        assert_eq!(admit("mine", &e, limits(1, 0)), before);
        // One ahead of it starting does move it.
        e.insert(1, entry("ahead", 0, 0, 1, Slot::Waiting));
        assert_ne!(admit("mine", &e, limits(1, 0)), before);
    }

    #[test]
    fn higher_priority_jumps_ahead_of_older_jobs() {
        let e = [entry("old", 0, 1, 1, Slot::Waiting), entry("urgent", 100, 5, 1, Slot::Waiting)];
        assert_eq!(admit("urgent", &e, limits(1, 0)).admission, Admission::Granted);
        assert!(matches!(admit("old", &e, limits(1, 0)).admission, Admission::Queued { .. }));
    }

    #[test]
    fn a_big_job_that_does_not_fit_the_pod_limit_holds_back_those_behind_it() {
        let e = [
            entry("running", 0, 0, 6, Slot::Holding),
            entry("big", 0, 1, 8, Slot::Waiting),
            entry("small", 0, 2, 1, Slot::Waiting),
        ];
        match admit("big", &e, limits(0, 10)).admission {
            Admission::Queued { message } => assert!(message.contains("maxRunningPods 10"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(admit("small", &e, limits(0, 10)).admission, Admission::Queued { .. }));
        assert!(startable(&e, limits(0, 10)).is_empty());
    }
}
