//! How a job ends: winding down on cancel or expiry, and merging the shards' outputs (by the
//! runner of a one-shard job, or by a finalize pod, retried up to the backoff limit).

use super::*;

impl Planner<'_, '_> {
    /// Cancel or expiry: stop the runners, then merge what they finished.
    pub(super) fn wind_down(&mut self, expired: bool) -> Why {
        let end = if expired { Phase::Expired } else { Phase::Cancelled };
        let r = if expired { reason::EXPIRED } else { reason::CANCELLED };
        let stopping = self.stop_runners();
        if stopping > 0 {
            self.requeue = Some(Duration::from_secs(5));
            return Why::new(r, format!("stopping {stopping} runner pods"));
        }
        if self.st.start_time.is_none() {
            // Nothing ever ran, so there is nothing to merge.
            self.st.phase = end;
            return Why::new(r, "stopped before it started");
        }
        self.finalize(true, end)
    }

    /// A job of one shard: its runner merged the output itself, as an unsharded run does (a
    /// finalize pod would merge it a second time).
    pub(super) fn merged_by_its_runner(&mut self) -> Why {
        let ss = &self.st.shards[0];
        let (completed, failed) = (ss.completed, ss.failed);
        let c = &mut self.st.request_counts;
        c.completed = completed;
        c.failed = failed;
        c.total = Some(completed + failed);
        let out = self.obs.job.spec.output.uri.trim_end_matches('/');
        self.st.outputs = Some(Outputs {
            results: format!("{out}/results.jsonl"),
            errors: format!("{out}/errors.jsonl"),
            manifest: format!("{out}/manifest.json"),
        });
        self.st.phase = Phase::Succeeded;
        Why::new(
            reason::SUCCEEDED,
            format!("{} requests: {completed} completed, {failed} failed", completed + failed),
        )
    }

    /// The finalize pod merges the shards' outputs; `end` is the phase once it has.
    pub(super) fn finalize(&mut self, partial: bool, end: Phase) -> Why {
        let r = match end {
            Phase::Cancelled => reason::CANCELLED,
            Phase::Expired => reason::EXPIRED,
            _ => reason::SUCCEEDED,
        };
        let Some(pod) = self.finalize_pod().cloned() else {
            self.actions.push(Action::CreatePod(Box::new(runner_pod::finalize_pod(
                self.obs.job,
                partial,
                self.cfg,
            ))));
            self.st.phase = Phase::Finalizing;
            return Why::new(reason::FINALIZING, "merging the shards' outputs");
        };
        match pod_view::phase(&pod) {
            PodPhase::Succeeded => {
                let tm = pod_view::termination_message(&pod);
                if let Some(tm) = &tm {
                    let c = &mut self.st.request_counts;
                    c.completed = tm.counts.completed;
                    c.failed = tm.counts.failed;
                    let unprocessed = tm.unprocessed;
                    match end {
                        Phase::Cancelled => c.cancelled = unprocessed,
                        Phase::Expired => c.expired = unprocessed,
                        _ => {}
                    }
                    c.total = Some(tm.counts.completed + tm.counts.failed + unprocessed);
                }
                // A job stopped before any runner wrote has nothing merged and no files.
                let merged_nothing = end != Phase::Succeeded
                    && tm.as_ref().is_some_and(|t| t.message.is_some() && t.counts == Default::default());
                let out = self.obs.job.spec.output.uri.trim_end_matches('/');
                self.st.outputs = (!merged_nothing).then(|| Outputs {
                    results: format!("{out}/results.jsonl"),
                    errors: format!("{out}/errors.jsonl"),
                    manifest: format!("{out}/manifest.json"),
                });
                self.st.phase = end;
                if merged_nothing {
                    let why = match end {
                        Phase::Cancelled => "cancelled",
                        _ => "completion window passed",
                    };
                    return Why::new(r, format!("{why} before any runner had started writing: nothing ran"));
                }
                let c = self.st.request_counts;
                let message = match end {
                    Phase::Succeeded => format!(
                        "{} requests: {} completed, {} failed",
                        c.completed + c.failed,
                        c.completed,
                        c.failed
                    ),
                    Phase::Cancelled => format!(
                        "cancelled: {} completed, {} failed, {} not run",
                        c.completed, c.failed, c.cancelled
                    ),
                    _ => format!(
                        "completion window passed: {} completed, {} failed, {} expired",
                        c.completed, c.failed, c.expired
                    ),
                };
                Why::new(r, message)
            }
            PodPhase::Failed => {
                let uid = pod_view::uid(&pod).to_string();
                if !self.st.finalize_failures.contains(&uid) {
                    self.st.finalize_failures.push(uid);
                }
                let failures = self.st.finalize_failures.len() as u32;
                let limit = self.obs.job.spec.backoff_limit;
                let why = pod_view::exit_summary(&pod);
                if failures > limit {
                    self.st.phase = Phase::Failed;
                    return Why::new(
                        reason::FINALIZE_FAILED,
                        format!("merging the outputs failed {failures} times (backoffLimit {limit}): {why}"),
                    );
                }
                // Merging is idempotent (an evicted pod, an S3 outage): a fresh pod merges
                // again once this one is gone.
                if !pod_view::is_deleting(&pod) {
                    self.actions.push(Action::DeletePod {
                        name: pod_view::name(&pod).into(),
                        uid: pod_view::uid(&pod).into(),
                    });
                }
                self.st.phase = Phase::Finalizing;
                self.requeue = Some(Duration::from_secs(5 << failures.min(6)));
                Why::new(
                    reason::FINALIZING,
                    format!("merging the outputs failed ({why}); retry {failures} of {limit}"),
                )
            }
            _ => {
                self.st.phase = Phase::Finalizing;
                self.requeue = Some(Duration::from_secs(5));
                if let Some(why) = self.blocked(&pod) {
                    return why;
                }
                Why::new(reason::FINALIZING, "merging the shards' outputs")
            }
        }
    }
}
