use super::*;
use crate::fixtures::{JobBuilder, PodBuilder, at};
use barge_api::batchjob::condition;
use barge_api::{Counts, ShardId};

/// Plans once and stores the new status on the job, as the controller's status patch would.
fn step(job: &mut BatchJob, pods: &[Pod], progress: &BTreeMap<u32, Progress>, now: i64) -> Decision {
    step_with(job, pods, progress, Admission::Granted, now)
}

fn step_with(
    job: &mut BatchJob,
    pods: &[Pod],
    progress: &BTreeMap<u32, Progress>,
    admission: Admission,
    now: i64,
) -> Decision {
    let obs = Observed { job, pods, progress, admission, refused: None, now: at(now) };
    let d = plan(&obs, &Config::default());
    job.status = Some(d.status.clone());
    d
}

fn none() -> BTreeMap<u32, Progress> {
    BTreeMap::new()
}

fn created(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod(p) => p.metadata.name.clone(),
            _ => None,
        })
        .collect()
}

fn deleted(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn cond<'a>(d: &'a Decision, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    d.status.conditions.iter().find(|c| c.type_ == type_).expect("condition present")
}

fn counts(lines: u64, completed: u64, failed: u64) -> Counts {
    Counts { lines, completed, failed, prompt_tokens: completed * 10, completion_tokens: 0 }
}

fn progress(shard: u32, of: u32, c: Counts, bytes: (u64, u64), rps: f64) -> Progress {
    Progress {
        shard: ShardId { index: shard, count: of },
        counts: c,
        requests_per_second: rps,
        tokens_per_second: rps * 10.0,
        started: String::new(),
        done: false,
        bytes_done: bytes.0,
        bytes_total: bytes.1,
    }
}

/// A pod's `/progress` is untrusted (a job may bring its own image). A rate of 1e-300 once
/// panicked the whole operator in `Duration::from_secs_f64`; sanitized reports of any shape plan
/// without a panic, and a hopeless ETA is shown as none.
#[test]
fn absurd_progress_reports_never_panic_the_plan() {
    let mut job = JobBuilder::new("emb").parallelism(2).build();
    step(&mut job, &[], &none(), 0);
    let pods =
        [PodBuilder::runner(&job, 0).running(10).build(), PodBuilder::runner(&job, 1).running(10).build()];
    for rps in [1e-300, f64::MIN_POSITIVE, 0.0, -1.0, f64::NAN, f64::INFINITY, f64::MAX] {
        for n in [0, 1, u64::MAX] {
            let live = BTreeMap::from([
                (0, crate::untrusted::progress(progress(0, 2, counts(n, n, n), (n, 10_000), rps))),
                (1, crate::untrusted::progress(progress(1, 2, counts(n, n, n), (1, n), rps))),
            ]);
            let d = step(&mut job, &pods, &live, 110);
            if rps == 1e-300 && n == 1 {
                assert_eq!(d.status.eta, None, "an ETA past a century is none");
            }
        }
    }
}

#[test]
fn an_admitted_job_starts_one_pod_per_shard_and_replanning_creates_nothing_more() {
    let mut job = JobBuilder::new("emb").parallelism(3).build();
    let d = step(&mut job, &[], &none(), 0);
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(created(&d), ["emb-shard-0", "emb-shard-1", "emb-shard-2"]);
    assert_eq!(d.status.start_time, Some(Time(at(0))));
    let ready = cond(&d, condition::READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::PODS_STARTING));

    let pods: Vec<Pod> = (0..3).map(|i| PodBuilder::runner(&job, i).build()).collect();
    let again = step(&mut job, &pods, &none(), 1);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(again.status.start_time, Some(Time(at(0))), "the start time stays");
}

/// A ResourceQuota that is full refuses a pod with 403: the job keeps trying, and its Ready
/// condition says why nothing starts, until every shard has its pod.
#[test]
fn a_pod_refused_by_admission_is_shown_in_ready_until_every_shard_has_its_pod() {
    let mut job = JobBuilder::new("emb").parallelism(2).build();
    let refusal = "the API server refused runner pod emb-shard-1 (retrying): exceeded quota: pods=1";
    let with_refusal = |job: &mut BatchJob, pods: &[Pod], now| {
        let obs = Observed {
            job,
            pods,
            progress: &none(),
            admission: Admission::Granted,
            refused: Some(refusal),
            now: at(now),
        };
        let d = plan(&obs, &Config::default());
        job.status = Some(d.status.clone());
        d
    };
    let one = [PodBuilder::runner(&job, 0).build()];
    let d = with_refusal(&mut job, &one, 0);
    assert_eq!(created(&d), ["emb-shard-1"], "it keeps asking");
    let ready = cond(&d, condition::READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::POD_CREATE_REFUSED));
    assert!(ready.message.contains("exceeded quota"), "{}", ready.message);
    assert_eq!(d.status.phase, Phase::Running);

    // Let in: every shard has its pod, and an old refusal no longer speaks for the job.
    let both: Vec<Pod> = (0..2).map(|i| PodBuilder::runner(&job, i).build()).collect();
    let d = with_refusal(&mut job, &both, 1);
    assert!(d.actions.is_empty());
    assert_ne!(cond(&d, condition::READY).reason, reason::POD_CREATE_REFUSED);
}

#[test]
fn a_job_whose_output_another_unfinished_job_owns_fails_naming_it() {
    let mut job = JobBuilder::new("late").build();
    let d = step_with(&mut job, &[], &none(), Admission::OutputInUse { by: "team-a/early".into() }, 0);
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.actions.is_empty(), "no pod of it starts");
    let failed = cond(&d, condition::FAILED);
    assert_eq!(failed.reason, reason::OUTPUT_IN_USE);
    assert!(
        failed.message.contains("team-a/early") && failed.message.contains("spec.output.uri"),
        "{}",
        failed.message
    );
    let again = step(&mut job, &[], &none(), 5);
    assert_eq!(cond(&again, condition::FAILED).reason, reason::OUTPUT_IN_USE, "the reason stays");
}

#[test]
fn a_job_beyond_the_queue_limits_waits_with_reason_queued() {
    let mut job = JobBuilder::new("emb").build();
    let d = step_with(&mut job, &[], &none(), Admission::Queued { message: "position 2 of 4".into() }, 0);
    assert_eq!(d.status.phase, Phase::Pending);
    assert!(d.actions.is_empty());
    assert_eq!(d.status.start_time, None);
    let ready = cond(&d, condition::READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::QUEUED));
    assert_eq!(ready.message, "position 2 of 4");
}

#[test]
fn live_progress_gives_counts_an_estimated_total_throughput_eta_and_a_running_cost() {
    let mut job = JobBuilder::new("emb").parallelism(2).build();
    step(&mut job, &[], &none(), 0);
    let pods =
        [PodBuilder::runner(&job, 0).running(10).build(), PodBuilder::runner(&job, 1).running(10).build()];
    let live = BTreeMap::from([
        (0, progress(0, 2, counts(100, 98, 2), (1_000, 10_000), 5.0)),
        (1, progress(1, 2, counts(100, 100, 0), (1_000, 10_000), 5.0)),
    ]);
    let d = step(&mut job, &pods, &live, 110);
    let c = d.status.request_counts;
    assert_eq!((c.completed, c.failed, c.total), (198, 2, None));
    assert_eq!(d.status.progress.as_deref(), Some("200/~2000"));
    assert_eq!(d.status.throughput.map(|t| t.requests_per_second), Some(10.0));
    // 1,800 requests left at 10 per second.
    assert_eq!(d.status.eta.as_deref(), Some("3m"));
    assert_eq!(d.status.tokens.prompt, 1980);
    let cost = d.status.cost.expect("cost");
    // Two CPU-only pods, 100 s each, one core each.
    assert_eq!((cost.unit.as_str(), cost.unit_seconds), ("cpu", 200.0));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));
}

#[test]
fn a_failed_runner_is_replaced_after_it_is_gone_and_counted_once() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let failed = PodBuilder::runner(&job, 0).ended(1, 0, 50, counts(40, 40, 0), 0).build();
    let d = step(&mut job, std::slice::from_ref(&failed), &none(), 60);
    assert_eq!(deleted(&d), ["emb-shard-0"]);
    assert!(created(&d).is_empty(), "never two pods for one shard");
    assert_eq!(d.status.shards[0].restarts, 1);
    assert_eq!(d.status.shards[0].message.as_deref(), Some("cannot reach the bucket"));

    // The same observation again (say the delete is still in flight): nothing is counted twice.
    let d = step(&mut job, std::slice::from_ref(&failed), &none(), 61);
    assert_eq!(d.status.shards[0].restarts, 1);
    assert_eq!(d.status.cost.as_ref().map(|c| c.unit_seconds), Some(50.0));

    // Gone: the replacement is created, resuming from the checkpoint.
    let d = step(&mut job, &[], &none(), 62);
    assert_eq!(created(&d), ["emb-shard-0"]);
    assert_eq!(d.status.shards[0].completed, 40, "counts from the failed pod's checkpoint stay");

    let replacement = PodBuilder::runner(&job, 0).uid("pod-0-b").running(70).build();
    let d = step(&mut job, &[replacement], &none(), 100);
    assert_eq!(d.status.cost.as_ref().map(|c| c.unit_seconds), Some(80.0), "50 s ended + 30 s running");
}

#[test]
fn cost_survives_an_operator_restart_without_double_counting() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let ended = PodBuilder::runner(&job, 0).ended(1, 0, 50, counts(1, 1, 0), 0).build();
    step(&mut job, std::slice::from_ref(&ended), &none(), 60);
    // A new operator process knows only what the status says; it sees the same pod again.
    let mut restarted = JobBuilder::new("emb").status(job.status.clone().expect("status")).build();
    let d = step(&mut restarted, &[ended], &none(), 300);
    assert_eq!(d.status.cost.map(|c| c.unit_seconds), Some(50.0));
    assert_eq!(d.status.shards[0].restarts, 1);
}

#[test]
fn too_many_failures_fail_the_job_with_the_last_error() {
    let mut job = JobBuilder::new("emb").backoff_limit(1).build();
    step(&mut job, &[], &none(), 0);
    let first = PodBuilder::runner(&job, 0).ended(1, 0, 5, Counts::default(), 0).build();
    step(&mut job, &[first], &none(), 10);
    let second = PodBuilder::runner(&job, 0).uid("pod-0-b").ended(1, 10, 15, Counts::default(), 0).build();
    let d = step(&mut job, &[second], &none(), 20);
    assert_eq!(d.status.phase, Phase::Failed);
    let failed = cond(&d, condition::FAILED);
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", reason::BACKOFF_LIMIT_EXCEEDED));
    assert!(failed.message.contains("cannot reach the bucket"), "{}", failed.message);
    assert_eq!(cond(&d, condition::STALLED).status, "True");
    assert!(d.status.completion_time.is_some());
}

/// A one-shard runner merges its own output (an unsharded run finalizes itself); a finalize pod
/// used to merge it all again.
#[test]
fn a_one_shard_job_succeeds_on_its_runner_s_own_merge_without_a_finalize_pod() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let done = PodBuilder::runner(&job, 0).ended(0, 0, 50, counts(6, 5, 1), 0).build();
    let d = step(&mut job, &[done], &none(), 51);
    assert!(created(&d).is_empty(), "no finalize pod: {:?}", created(&d));
    assert_eq!(d.status.phase, Phase::Succeeded);
    let c = d.status.request_counts;
    assert_eq!((c.completed, c.failed, c.total), (5, 1, Some(6)));
    assert_eq!(d.status.outputs.as_ref().map(|o| o.manifest.as_str()), Some("s3://out/emb/manifest.json"));
}

#[test]
fn finished_shards_are_merged_by_one_finalize_pod_then_the_job_succeeds() {
    let mut job = JobBuilder::new("emb").parallelism(2).build();
    step(&mut job, &[], &none(), 0);
    let mut pods = vec![
        PodBuilder::runner(&job, 0).ended(0, 0, 100, counts(6, 5, 1), 0).build(),
        PodBuilder::runner(&job, 1).ended(0, 0, 80, counts(4, 4, 0), 0).build(),
    ];
    let d = step(&mut job, &pods, &none(), 101);
    assert_eq!(d.status.phase, Phase::Finalizing);
    assert_eq!(created(&d), ["emb-finalize"]);
    assert_eq!(d.status.request_counts.total, Some(10));

    pods.push(PodBuilder::finalize(&job, false).ended(0, 101, 105, counts(10, 9, 1), 0).build());
    let d = step(&mut job, &pods, &none(), 106);
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert_eq!(cond(&d, condition::COMPLETE).status, "True");
    assert_eq!(cond(&d, condition::READY).status, "True");
    assert_eq!(d.status.outputs.as_ref().map(|o| o.results.as_str()), Some("s3://out/emb/results.jsonl"));
    assert_eq!(d.status.progress.as_deref(), Some("10/10"));
    assert_eq!(
        d.status.cost.as_ref().map(|c| c.unit_seconds),
        Some(180.0),
        "the finalize pod is not charged"
    );
    assert_eq!(d.status.completion_time, Some(Time(at(106))));

    let again = step(&mut job, &pods, &none(), 500);
    assert_eq!(again.status, d.status, "a finished job's status does not move");
    assert!(again.actions.is_empty());
}

#[test]
fn suspend_stops_the_pods_and_resume_continues_where_they_stopped() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let running = PodBuilder::runner(&job, 0).running(1).build();
    step(&mut job, std::slice::from_ref(&running), &none(), 10);

    job.spec.suspend = true;
    let d = step(&mut job, std::slice::from_ref(&running), &none(), 20);
    assert_eq!(deleted(&d), ["emb-shard-0"]);
    assert_eq!(d.status.phase, Phase::Running, "still stopping");
    let stopped = PodBuilder::runner(&job, 0).deleting().ended(143, 1, 22, counts(30, 30, 0), 0).build();
    let d = step(&mut job, &[stopped], &none(), 23);
    assert_eq!(d.status.shards[0].restarts, 0, "a stop we asked for is not a failure");
    let d2 = step(&mut job, &[], &none(), 24);
    assert_eq!(d2.status.phase, Phase::Suspended);
    assert_eq!(cond(&d2, condition::SUSPENDED).status, "True");
    assert!(d2.actions.is_empty());
    assert_eq!(d2.status.request_counts.completed, 30);

    job.spec.suspend = false;
    let d = step(&mut job, &[], &none(), 30);
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(created(&d), ["emb-shard-0"]);
    assert_eq!(d.status.cost.map(|c| c.unit_seconds), Some(21.0));
}

#[test]
fn a_job_created_suspended_is_left_alone() {
    let mut job = JobBuilder::new("emb").suspended().build();
    let d = step(&mut job, &[], &none(), 0);
    assert_eq!(d.status.phase, Phase::Suspended);
    assert!(d.actions.is_empty());
    assert_eq!(d.status.start_time, None);
}

#[test]
fn cancel_stops_the_runners_and_finalizes_partial_results() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let running = PodBuilder::runner(&job, 0).running(1).build();
    step(&mut job, std::slice::from_ref(&running), &none(), 5);
    job.spec.cancel = true;
    let d = step(&mut job, std::slice::from_ref(&running), &none(), 10);
    assert_eq!(deleted(&d), ["emb-shard-0"]);
    let d = step(&mut job, &[], &none(), 12);
    assert_eq!(created(&d), ["emb-finalize"]);
    let args = match &d.actions[0] {
        Action::CreatePod(p) => p.spec.as_ref().expect("spec").containers[0].args.clone().expect("args"),
        other => panic!("unexpected {other:?}"),
    };
    assert!(args.contains(&"--partial".to_string()));
    let fin = PodBuilder::finalize(&job, true).ended(0, 12, 14, counts(30, 29, 1), 70).build();
    let d = step(&mut job, &[fin], &none(), 15);
    assert_eq!(d.status.phase, Phase::Cancelled);
    let c = d.status.request_counts;
    assert_eq!((c.completed, c.failed, c.cancelled, c.total), (29, 1, 70, Some(100)));
    assert!(d.status.outputs.is_some());
}

/// Cancelled after a runner started but before it wrote anything (its model still downloading):
/// the partial finalize finds no job and merges nothing. That once ended FinalizeFailed.
#[test]
fn a_job_cancelled_before_any_runner_wrote_ends_cancelled_with_nothing_merged() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    job.spec.cancel = true;
    let d = step(&mut job, &[], &none(), 12);
    assert_eq!(created(&d), ["emb-finalize"]);
    let mut fin = PodBuilder::finalize(&job, true).ended(0, 12, 13, Counts::default(), 0).build();
    let tm = barge_api::TerminationMessage {
        shard: None,
        outcome: barge_api::Outcome::Done,
        counts: Counts::default(),
        unprocessed: 0,
        message: Some(
            "s3://b/out/ holds no job yet (no runner had started writing): nothing to merge".into(),
        ),
    };
    if let Some(t) = fin
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|c| c[0].state.as_mut())
        .and_then(|s| s.terminated.as_mut())
    {
        t.message = Some(tm.to_json());
    }
    let d = step(&mut job, &[fin], &none(), 15);
    assert_eq!(d.status.phase, Phase::Cancelled);
    assert_eq!(d.status.outputs, None, "no files were written");
    let complete = cond(&d, condition::COMPLETE);
    assert_eq!(complete.reason, reason::CANCELLED);
    assert!(complete.message.contains("nothing ran"), "{}", complete.message);
}

/// An evicted finalize pod or an S3 outage once failed a job whose shards all succeeded.
#[test]
fn a_failed_finalize_is_retried_up_to_the_backoff_limit() {
    let mut job = JobBuilder::new("emb").backoff_limit(1).parallelism(2).build();
    step(&mut job, &[], &none(), 0);
    let done = [
        PodBuilder::runner(&job, 0).ended(0, 1, 10, counts(5, 5, 0), 0).build(),
        PodBuilder::runner(&job, 1).ended(0, 1, 10, counts(5, 5, 0), 0).build(),
    ];
    let d = step(&mut job, &done, &none(), 11);
    assert_eq!(created(&d), ["emb-finalize"]);
    let spec_job = job.clone();
    let failed = |uid: &str| {
        PodBuilder::finalize(&spec_job, false).uid(uid).ended(1, 11, 12, counts(0, 0, 0), 0).build()
    };
    let with = |extra: Pod| [done[0].clone(), done[1].clone(), extra];
    let d = step(&mut job, &with(failed("f1")), &none(), 13);
    assert_eq!(d.status.phase, Phase::Finalizing);
    assert_eq!(deleted(&d), ["emb-finalize"]);
    assert!(
        cond(&d, condition::READY).message.contains("retry 1 of 1"),
        "{}",
        cond(&d, condition::READY).message
    );
    let again = step(&mut job, &with(failed("f1")), &none(), 14);
    assert_eq!(again.status.finalize_failures, ["f1"], "one pod is one failure, however often it is seen");
    let d = step(&mut job, &done, &none(), 20);
    assert_eq!(created(&d), ["emb-finalize"], "a fresh finalize pod once the failed one is gone");
    let d = step(&mut job, &with(failed("f2")), &none(), 30);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(cond(&d, condition::FAILED).reason, reason::FINALIZE_FAILED);
}

#[test]
fn a_passed_completion_window_expires_the_unfinished_requests() {
    let mut job = JobBuilder::new("emb").window("1m").build();
    step(&mut job, &[], &none(), 0);
    let running = PodBuilder::runner(&job, 0).running(1).build();
    let d = step(&mut job, std::slice::from_ref(&running), &none(), 59);
    assert!(deleted(&d).is_empty());
    let d = step(&mut job, std::slice::from_ref(&running), &none(), 60);
    assert_eq!(deleted(&d), ["emb-shard-0"]);
    step(&mut job, &[], &none(), 62);
    let fin = PodBuilder::finalize(&job, true).ended(0, 62, 63, counts(10, 10, 0), 5).build();
    let d = step(&mut job, &[fin], &none(), 64);
    assert_eq!(d.status.phase, Phase::Expired);
    assert_eq!(d.status.request_counts.expired, 5);
    assert_eq!(cond(&d, condition::FAILED).reason, reason::EXPIRED);
}

#[test]
fn a_bad_spec_fails_once_with_the_field_named_and_starts_nothing() {
    let mut job = JobBuilder::new("emb").window("0s").build();
    let d = step(&mut job, &[], &none(), 0);
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.actions.is_empty());
    let failed = cond(&d, condition::FAILED);
    assert_eq!(failed.reason, reason::INVALID_SPEC);
    assert!(failed.message.starts_with("spec.completionWindow:"), "{}", failed.message);
    let again = step(&mut job, &[], &none(), 10);
    assert_eq!(again.status, d.status, "no flapping, no requeue storm");
    assert_eq!(again.requeue_after, None);
}

/// A Secret created just after the job, or a registry that hiccups, once failed the job at
/// once: both are waited out for the start grace (5 minutes by default), with a condition
/// saying what is awaited, and fail the job only after it.
#[test]
fn a_missing_secret_is_waited_out_for_the_start_grace_then_fails_the_job() {
    let mut job = JobBuilder::new("emb").credentials("nope").build();
    step(&mut job, &[], &none(), 0);
    let spec_job = job.clone();
    let stuck = |created: i64| {
        let mut pod = PodBuilder::runner(&spec_job, 0)
            .waiting("CreateContainerConfigError", "secret \"nope\" not found")
            .build();
        pod.metadata.creation_timestamp = Some(Time(at(created)));
        pod
    };
    let d = step(&mut job, &[stuck(1)], &none(), 60);
    assert_eq!(d.status.phase, Phase::Running);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    let ready = cond(&d, condition::READY);
    assert_eq!(ready.reason, reason::POD_START_BLOCKED);
    assert!(
        ready.message.contains("secret \"nope\" not found") && ready.message.contains("4m"),
        "{}",
        ready.message
    );
    assert!(d.requeue_after.is_some_and(|r| r <= Duration::from_secs(15)));

    let d = step(&mut job, &[stuck(1)], &none(), 302);
    assert_eq!(d.status.phase, Phase::Failed);
    let failed = cond(&d, condition::FAILED);
    assert_eq!(failed.reason, reason::MISSING_SECRET);
    assert!(
        failed.message.contains("secret \"nope\" not found") && failed.message.contains("more than 5m"),
        "{}",
        failed.message
    );
    assert_eq!(deleted(&d), ["emb-shard-0"]);
}

#[test]
fn an_image_name_that_can_never_pull_fails_at_once() {
    let mut job = JobBuilder::new("emb").build();
    step(&mut job, &[], &none(), 0);
    let mut pod = PodBuilder::runner(&job, 0).waiting("InvalidImageName", "invalid reference format").build();
    pod.metadata.creation_timestamp = Some(Time(at(1)));
    let d = step(&mut job, &[pod], &none(), 5);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(cond(&d, condition::FAILED).reason, reason::IMAGE_PULL);
}

#[test]
fn a_finished_job_with_a_ttl_is_deleted_when_it_runs_out() {
    let mut job = JobBuilder::new("emb").ttl(60).build();
    step(&mut job, &[], &none(), 0);
    job.spec.cancel = true;
    let d = step(&mut job, &[], &none(), 10);
    assert_eq!(d.status.phase, Phase::Finalizing);
    let fin = PodBuilder::finalize(&job, true).ended(0, 10, 11, Counts::default(), 3).build();
    let d = step(&mut job, std::slice::from_ref(&fin), &none(), 12);
    assert_eq!(d.status.phase, Phase::Cancelled);
    let d = step(&mut job, std::slice::from_ref(&fin), &none(), 30);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(42)));
    assert!(d.actions.is_empty());
    let d = step(&mut job, &[fin], &none(), 72);
    assert_eq!(d.actions, [Action::DeleteJob]);
}

#[test]
fn etas_read_like_durations() {
    assert_eq!(human(Duration::from_secs(42)), "42s");
    assert_eq!(human(Duration::from_secs(720)), "12m");
    assert_eq!(human(Duration::from_secs(3900)), "1h5m");
}
