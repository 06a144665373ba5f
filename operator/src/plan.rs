//! The controller's brain: from what it observes (the job, its pods, the runners' live progress,
//! the queue's verdict and the time) to the status the job should have and the few actions that
//! get it there. Pure: no IO, so every rule is a unit test.
//!
//! Guarantees:
//! - Idempotent: planning again on the same observation yields the same status and no new
//!   pod creations.
//! - One live pod per shard: a replacement is planned only once the old pod is gone.
//! - Cost counts each pod once: a pod's runtime is tracked by UID in the status itself, so an
//!   operator restart neither loses nor repeats it.

use std::collections::BTreeMap;
use std::time::Duration;

use barge_api::batchjob::{
    BatchJob, BatchJobStatus, Outputs, Phase, RequestCounts, ShardPhase, ShardStatus, Throughput,
    TokenCounts, reason,
};
use barge_api::{Outcome, Progress};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::conditions::{Why, conditions};
use crate::config::Config;
use crate::pod_view::{self, PodPhase};
use crate::runner_pod;
use crate::{cost, validate};

/// How many ended pod UIDs a shard remembers; older ones cannot come back.
const COUNTED_PODS_KEPT: usize = 16;

/// The queue's verdict for a job that has not started (or was suspended and resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Granted,
    Queued {
        message: String,
    },
    /// The queue's limits can never admit the job (`message` says why).
    Refused {
        message: String,
    },
    /// Another unfinished job (`namespace/name`) owns the job's output.
    OutputInUse {
        by: String,
    },
}

pub struct Observed<'a> {
    pub job: &'a BatchJob,
    /// The job's pods (runner and finalize), as the API server last showed them.
    pub pods: &'a [Pod],
    /// Fresh `/progress` answers of running shards, by shard index.
    pub progress: &'a BTreeMap<u32, Progress>,
    pub admission: Admission,
    /// Why the API server last refused to create one of the job's pods, while it keeps
    /// refusing (a full ResourceQuota): shown in the Ready condition.
    pub refused: Option<&'a str>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreatePod(Box<Pod>),
    /// Delete this pod (the UID guards against deleting its successor by name).
    DeletePod {
        name: String,
        uid: String,
    },
    DeleteJob,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: BatchJobStatus,
    /// The reason and message of the deciding condition.
    pub why: Why,
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// Whether the job takes a place in the operator's queue limits.
    pub fn holds_slot(&self) -> bool {
        matches!(self.status.phase, Phase::Running | Phase::Finalizing)
    }
}

pub fn plan(obs: &Observed<'_>, cfg: &Config) -> Decision {
    let job = obs.job;
    let old = job.status.clone().unwrap_or_default();
    let mut p = Planner { obs, cfg, st: old.clone(), actions: Vec::new(), requeue: None };
    p.st.observed_generation = job.metadata.generation;
    let why = p.decide();
    p.st.conditions = conditions(p.st.phase, &why, job.metadata.generation, &old.conditions, obs.now);
    if p.st.phase.is_finished() && p.st.completion_time.is_none() {
        p.st.completion_time = Some(Time(obs.now));
    }
    Decision { status: p.st, why, actions: p.actions, requeue_after: p.requeue }
}

struct Planner<'a, 'b> {
    obs: &'a Observed<'b>,
    cfg: &'a Config,
    st: BatchJobStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
}

impl Planner<'_, '_> {
    fn decide(&mut self) -> Why {
        let spec = &self.obs.job.spec;
        if self.st.phase.is_finished() {
            return self.finished();
        }
        let checked = match validate::check(spec) {
            Ok(c) => c,
            Err(e) => {
                self.stop_all_pods();
                self.st.phase = Phase::Failed;
                return Why::new(reason::INVALID_SPEC, e.to_string());
            }
        };
        self.observe_shards();
        let rate = cost::rate(spec, checked.cpu_cores, &self.cfg.pricing);
        let why = self.lifecycle(checked.completion_window);
        self.summarise(&rate);
        why
    }

    /// A finished job only waits for its TTL, and makes sure nothing of it still runs.
    fn finished(&mut self) -> Why {
        self.stop_all_pods();
        let job = self.obs.job;
        if let (Some(ttl), Some(done)) = (job.spec.ttl_seconds_after_finished, &self.st.completion_time) {
            let expires = done.0 + Duration::from_secs(ttl.into());
            if self.obs.now >= expires {
                self.actions.push(Action::DeleteJob);
            } else {
                self.requeue = Some(self.obs.now.duration_until(expires).unsigned_abs());
            }
        }
        let old = self.obs.job.status.as_ref().and_then(|s| {
            s.conditions.iter().find(|c| c.type_ == barge_api::batchjob::condition::COMPLETE).cloned()
        });
        // Keep the reason the job finished with.
        let r = match self.st.phase {
            Phase::Succeeded => reason::SUCCEEDED,
            Phase::Cancelled => reason::CANCELLED,
            Phase::Expired => reason::EXPIRED,
            _ => self.failed_reason(),
        };
        let message = old.map(|c| c.message).unwrap_or_default();
        let message = if message.is_empty() { self.failed_message() } else { message };
        Why::new(r, message)
    }

    fn failed_reason(&self) -> &'static str {
        let conds = self.obs.job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        let r = conds
            .iter()
            .find(|c| c.type_ == barge_api::batchjob::condition::FAILED)
            .map(|c| c.reason.as_str());
        [
            reason::INVALID_SPEC,
            reason::BACKOFF_LIMIT_EXCEEDED,
            reason::FINALIZE_FAILED,
            reason::MISSING_SECRET,
            reason::IMAGE_PULL,
            reason::OUTPUT_IN_USE,
            reason::OPERATOR_ERROR,
            reason::EXPIRED,
        ]
        .into_iter()
        .find(|known| Some(*known) == r)
        .unwrap_or(reason::BACKOFF_LIMIT_EXCEEDED)
    }

    fn failed_message(&self) -> String {
        let conds = self.obs.job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        conds
            .iter()
            .find(|c| c.type_ == barge_api::batchjob::condition::FAILED)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    fn runner_pods(&self) -> impl Iterator<Item = &Pod> {
        self.obs.pods.iter().filter(|p| pod_view::role(p) == Some("runner"))
    }

    fn finalize_pod(&self) -> Option<&Pod> {
        self.obs.pods.iter().find(|p| pod_view::role(p) == Some("finalize"))
    }

    fn shard_pod(&self, index: u32) -> Option<&Pod> {
        self.runner_pods().find(|p| pod_view::shard_index(p) == Some(index))
    }

    fn live_runner_pods(&self) -> Vec<&Pod> {
        self.runner_pods().filter(|p| !pod_view::is_terminal(p)).collect()
    }

    /// Asks every pod of the job that still runs to stop (it checkpoints on SIGTERM).
    fn stop_all_pods(&mut self) {
        self.delete_live(|_| true);
    }

    /// Asks the live runner pods to stop and marks their shards Stopped; returns how many pods
    /// are still stopping.
    fn stop_runners(&mut self) -> usize {
        self.delete_live(|p| pod_view::role(p) == Some("runner"));
        for ss in &mut self.st.shards {
            if matches!(ss.phase, ShardPhase::Running | ShardPhase::Pending) {
                ss.phase = ShardPhase::Stopped;
            }
        }
        self.live_runner_pods().len()
    }

    /// Deletes every pod of the job that `which` picks and that still runs and is not already
    /// being deleted.
    fn delete_live(&mut self, which: impl Fn(&Pod) -> bool) {
        let doomed: Vec<Action> = self
            .obs
            .pods
            .iter()
            .filter(|p| which(p) && !pod_view::is_terminal(p) && !pod_view::is_deleting(p))
            .map(|p| Action::DeletePod { name: pod_view::name(p).into(), uid: pod_view::uid(p).into() })
            .collect();
        self.actions.extend(doomed);
    }

    /// Brings each shard's entry up to date with its pod: phase, counts, runtime, restarts.
    fn observe_shards(&mut self) {
        let n = self.obs.job.spec.parallelism;
        self.st.shards.resize_with(n as usize, ShardStatus::default);
        for i in 0..n {
            let pod = self.shard_pod(i).cloned();
            let progress = self.obs.progress.get(&i).cloned();
            let now = self.obs.now;
            let ss = &mut self.st.shards[i as usize];
            ss.index = i;
            let Some(pod) = pod else {
                fold_current(ss);
                if ss.phase == ShardPhase::Running {
                    ss.phase = ShardPhase::Pending;
                }
                continue;
            };
            let uid = pod_view::uid(&pod).to_string();
            if ss.pod_uid.as_deref() != Some(uid.as_str()) {
                fold_current(ss);
                ss.pod_uid = Some(uid.clone());
                ss.pod_seconds = 0.0;
            }
            ss.pod = Some(pod_view::name(&pod).to_string());
            if !ss.counted_pods.contains(&uid) {
                ss.pod_seconds = pod_view::runtime_seconds(&pod, now).round();
            }
            match pod_view::phase(&pod) {
                PodPhase::Succeeded => {
                    if let Some(tm) = pod_view::termination_message(&pod) {
                        take_counts(ss, &tm.counts);
                    }
                    ss.phase = ShardPhase::Succeeded;
                    ss.bytes_read = ss.bytes_total;
                    ss.message = None;
                    fold_current(ss);
                }
                PodPhase::Failed => {
                    if let Some(tm) = pod_view::termination_message(&pod) {
                        take_counts(ss, &tm.counts);
                    }
                    let interrupted = pod_view::termination_message(&pod)
                        .is_some_and(|t| t.outcome == Outcome::Interrupted);
                    let stopped_by_us =
                        pod_view::is_deleting(&pod) || (interrupted && ss.phase == ShardPhase::Stopped);
                    let newly = fold_current(ss);
                    if newly && !stopped_by_us {
                        ss.restarts += 1;
                        ss.message = Some(pod_view::exit_summary(&pod));
                    }
                    if ss.phase != ShardPhase::Stopped {
                        ss.phase = ShardPhase::Failed;
                    }
                }
                PodPhase::Running => {
                    if let Some(p) = progress {
                        take_counts(ss, &p.counts);
                        ss.bytes_read = p.bytes_done;
                        ss.bytes_total = p.bytes_total;
                    }
                    ss.phase = ShardPhase::Running;
                }
                PodPhase::Pending | PodPhase::Unknown => {
                    if ss.phase != ShardPhase::Succeeded {
                        ss.phase = ShardPhase::Pending;
                    }
                }
            }
        }
    }

    /// Suspend, cancel, expiry, admission, running and finalizing.
    fn lifecycle(&mut self, window: Duration) -> Why {
        let spec = &self.obs.job.spec;
        let now = self.obs.now;
        let expired = self.st.start_time.as_ref().is_some_and(|s| now >= s.0 + window);
        if spec.cancel || expired {
            return self.wind_down(expired);
        }
        if spec.suspend && self.st.phase != Phase::Finalizing {
            let stopping = self.stop_runners();
            if stopping > 0 {
                self.st.phase = Phase::Running;
                return Why::new(
                    reason::SUSPENDED,
                    format!("suspending: waiting for {stopping} pods to checkpoint and stop"),
                );
            }
            self.st.phase = Phase::Suspended;
            return Why::new(reason::SUSPENDED, "suspended by spec.suspend; set it to false to resume");
        }
        if matches!(self.st.phase, Phase::Pending | Phase::Suspended) {
            match &self.obs.admission {
                Admission::Queued { message } => {
                    self.st.phase = Phase::Pending;
                    self.requeue = Some(Duration::from_secs(30));
                    return Why::new(reason::QUEUED, message.clone());
                }
                Admission::Refused { message } => {
                    self.stop_all_pods();
                    self.st.phase = Phase::Failed;
                    return Why::new(reason::INVALID_SPEC, message.clone());
                }
                Admission::OutputInUse { by } => {
                    self.stop_all_pods();
                    self.st.phase = Phase::Failed;
                    return Why::new(
                        reason::OUTPUT_IN_USE,
                        format!(
                            "spec.output.uri {} is the output of BatchJob {by}, which has not finished; two jobs on one output would mix their results. Use another output, or wait for {by} to finish",
                            self.obs.job.spec.output.uri
                        ),
                    );
                }
                Admission::Granted => {
                    if self.st.start_time.is_none() {
                        self.st.start_time = Some(Time(now));
                    }
                    self.st.phase = Phase::Running;
                }
            }
        }
        if self.obs.job.spec.parallelism == 1
            && self.st.phase != Phase::Finalizing
            && self.finalize_pod().is_none()
            && self.st.shards.first().is_some_and(|s| s.phase == ShardPhase::Succeeded)
        {
            return self.merged_by_its_runner();
        }
        if self.st.phase == Phase::Finalizing
            || self.st.shards.iter().all(|s| s.phase == ShardPhase::Succeeded)
        {
            return self.finalize(false, Phase::Succeeded);
        }
        self.run_shards()
    }

    fn run_shards(&mut self) -> Why {
        let spec = &self.obs.job.spec;
        self.st.phase = Phase::Running;
        // A pod the user must fix something for (a Secret, an image) ends the job with that
        // reason, at once or after the start grace when it may clear up by itself.
        let pods: Vec<Pod> = self.runner_pods().cloned().collect();
        if let Some(why) = pods.iter().find_map(|p| self.blocked(p)) {
            return why;
        }
        if let Some(ss) = self.st.shards.iter().find(|s| s.restarts > spec.backoff_limit) {
            let message = format!(
                "shard {} failed {} times (backoffLimit {}): {}",
                ss.index,
                ss.restarts,
                spec.backoff_limit,
                ss.message.clone().unwrap_or_default()
            );
            self.stop_all_pods();
            self.st.phase = Phase::Failed;
            return Why::new(reason::BACKOFF_LIMIT_EXCEEDED, message);
        }
        let mut waiting_for_schedule = None;
        for i in 0..spec.parallelism {
            let shard_phase = self.st.shards[i as usize].phase;
            match self.shard_pod(i).cloned() {
                Some(pod) if pod_view::phase(&pod) == PodPhase::Failed && !pod_view::is_deleting(&pod) => {
                    // Replaced once it is gone; its successor resumes from the checkpoint.
                    self.actions.push(Action::DeletePod {
                        name: pod_view::name(&pod).into(),
                        uid: pod_view::uid(&pod).into(),
                    });
                }
                Some(pod) if waiting_for_schedule.is_none() => {
                    waiting_for_schedule = pod_view::unschedulable(&pod);
                }
                Some(_) => {}
                None if shard_phase != ShardPhase::Succeeded => {
                    let pod = runner_pod::shard_pod(self.obs.job, i, self.cfg);
                    self.st.shards[i as usize].phase = ShardPhase::Pending;
                    self.actions.push(Action::CreatePod(Box::new(pod)));
                }
                None => {}
            }
        }
        self.requeue = Some(self.cfg.progress.interval());
        let running = self.st.shards.iter().filter(|s| s.phase == ShardPhase::Running).count();
        let creating = self.actions.iter().any(|a| matches!(a, Action::CreatePod(_)));
        if let (true, Some(refused)) = (creating, self.obs.refused) {
            let message = format!("{running} of {} shards running; {refused}", spec.parallelism);
            return Why::new(reason::POD_CREATE_REFUSED, message);
        }
        if let Some(msg) = waiting_for_schedule {
            return Why::new(reason::UNSCHEDULABLE, msg);
        }
        if running == 0 {
            return Why::new(reason::PODS_STARTING, format!("starting {} runner pods", spec.parallelism));
        }
        Why::new(reason::RUNNING, format!("{running} of {} shards running", spec.parallelism))
    }

    /// What a blocked pod means for the job: Failed now, or a wait until the start grace
    /// (counted from the pod's creation) runs out.
    fn blocked(&mut self, pod: &Pod) -> Option<Why> {
        let b = pod_view::blocked(pod)?;
        let deadline = pod_view::created(pod).map(|c| c + self.cfg.start_grace());
        match deadline {
            Some(deadline) if b.transient && self.obs.now < deadline => {
                let left = self.obs.now.duration_until(deadline).unsigned_abs();
                self.requeue = Some(left.min(Duration::from_secs(15)).max(Duration::from_secs(1)));
                Some(Why::new(
                    reason::POD_START_BLOCKED,
                    format!("{}; the job fails if this lasts another {}", b.message, human(left)),
                ))
            }
            _ => {
                self.stop_all_pods();
                self.st.phase = Phase::Failed;
                let grace = if b.transient {
                    format!(" (for more than {})", human(self.cfg.start_grace()))
                } else {
                    String::new()
                };
                Some(Why::new(b.reason, format!("{}{grace}", b.message)))
            }
        }
    }

    /// Job-wide counts, progress, throughput, ETA and cost from the shards.
    fn summarise(&mut self, rate: &cost::Rate) {
        let st = &mut self.st;
        let finalized = st.outputs.is_some();
        if !finalized {
            let mut c = RequestCounts {
                expired: st.request_counts.expired,
                cancelled: st.request_counts.cancelled,
                ..Default::default()
            };
            for s in &st.shards {
                c.completed += s.completed;
                c.failed += s.failed;
            }
            if st.shards.iter().all(|s| s.phase == ShardPhase::Succeeded) {
                c.total = Some(st.shards.iter().map(|s| s.lines).sum());
            }
            st.request_counts = c;
        }
        st.tokens = TokenCounts {
            prompt: st.shards.iter().map(|s| s.prompt_tokens).sum(),
            completion: st.shards.iter().map(|s| s.completion_tokens).sum(),
        };
        let done = st.request_counts.completed + st.request_counts.failed;
        let estimate = estimated_total(&st.shards);
        st.progress = Some(match (st.request_counts.total, estimate) {
            (Some(t), _) => format!("{done}/{t}"),
            (None, Some(e)) => format!("{done}/~{e}"),
            (None, None) => format!("{done}/?"),
        });
        let running: Vec<&Progress> = self.obs.progress.values().filter(|p| !p.done).collect();
        if st.phase == Phase::Running && !running.is_empty() {
            let rps: f64 = running.iter().map(|p| p.requests_per_second).sum();
            let tps: f64 = running.iter().map(|p| p.tokens_per_second).sum();
            st.throughput =
                Some(Throughput { requests_per_second: round2(rps), tokens_per_second: round2(tps) });
            st.eta = match estimate {
                // Rates are sane (untrusted.rs) but may be tiny: an ETA past a century is none.
                Some(e) if rps > 0.0 => Duration::try_from_secs_f64(e.saturating_sub(done) as f64 / rps)
                    .ok()
                    .filter(|d| d.as_secs() < 100 * 365 * 86_400)
                    .map(human),
                _ => None,
            };
        } else {
            st.throughput = None;
            st.eta = None;
        }
        let seconds: f64 = st.shards.iter().map(|s| s.ended_pod_seconds + s.pod_seconds).sum();
        let tokens = st.tokens.prompt + st.tokens.completion;
        if st.start_time.is_some() {
            st.cost = Some(cost::cost(rate, seconds, tokens));
        }
    }
}

/// Moves the shard's current pod's runtime into its ended total, once per pod UID. Returns
/// whether this call counted it.
fn fold_current(ss: &mut ShardStatus) -> bool {
    let Some(uid) = ss.pod_uid.take() else { return false };
    let seconds = std::mem::take(&mut ss.pod_seconds);
    if ss.counted_pods.contains(&uid) {
        return false;
    }
    ss.ended_pod_seconds += seconds;
    ss.counted_pods.push(uid);
    if ss.counted_pods.len() > COUNTED_PODS_KEPT {
        ss.counted_pods.remove(0);
    }
    true
}

/// Counts only grow: a report older than what the status has is ignored.
fn take_counts(ss: &mut ShardStatus, c: &barge_api::Counts) {
    if c.lines >= ss.lines {
        ss.lines = c.lines;
        ss.completed = c.completed;
        ss.failed = c.failed;
        ss.prompt_tokens = c.prompt_tokens;
        ss.completion_tokens = c.completion_tokens;
    }
}

/// Requests in the whole input, extrapolated from the bytes the shards have read.
fn estimated_total(shards: &[ShardStatus]) -> Option<u64> {
    let lines: u64 = shards.iter().map(|s| s.lines).sum();
    let read: u64 = shards.iter().map(|s| s.bytes_read).sum();
    let known: Vec<&ShardStatus> = shards.iter().filter(|s| s.bytes_total > 0).collect();
    if read == 0 || known.is_empty() || lines == 0 {
        return None;
    }
    // Shards that have not reported yet are assumed as large as the average reported one.
    let total_bytes =
        known.iter().map(|s| s.bytes_total).sum::<u64>() as f64 * shards.len() as f64 / known.len() as f64;
    Some((lines as f64 * total_bytes / read as f64).round() as u64)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `1h5m`, `12m`, `40s`: what the ETA printer column shows.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

mod ending;
#[cfg(test)]
mod tests;
