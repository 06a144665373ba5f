//! Many jobs at once: a burst of 1,000 BatchJobs behind a queue limit of one. Each must get its
//! first status (queued, with its position) from the operator, and none may start beyond the
//! limit. The story prints the reconcile latency — from a job's creation to its first status —
//! as p50/p99/max; `scripts/bench-reconcile.sh` records it (`docs/reliability.md`). It asserts no
//! timing: the figures are a benchmark's, not a test's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge_api::batchjob::{BatchJob, condition, reason};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};

use crate::harness::*;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_a_thousand_jobs_is_queued_behind_the_limit_each_with_its_status() {
    let n = knob("BARGE_SCALE_JOBS", 1000);
    // Jobs in flight at once while creating: 1 is `kubectl apply` of a folder; more is a
    // pipeline creating jobs from several workers.
    let concurrency = knob("BARGE_SCALE_CONCURRENCY", 16);
    let mut story = Story::new("scale").await;
    story.install_operator(&["queue.maxRunningJobs=1"]).await;
    // The head of the queue runs a while, so the burst waits behind it.
    story.put("head.jsonl", requests(1500, "h")).await;
    story.put("tail.jsonl", requests(2, "t")).await;
    story.create("head", story.spec("head.jsonl", "head-out")).await;
    story.wait_phase("head", "Running", Duration::from_secs(60)).await;

    // First sight of each job's status, on this side's clock, from a watch opened before the burst.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let into = seen.clone();
    let stream = watcher(story.jobs(), watcher::Config::default()).default_backoff();
    let watch = tokio::spawn(async move {
        let mut jobs = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(job)) = jobs.next().await {
            let job: BatchJob = job;
            if job.status.as_ref().is_some_and(|s| !s.conditions.is_empty()) {
                into.lock()
                    .expect("seen")
                    .entry(job.metadata.name.unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });

    let burst_start = Instant::now();
    let created: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let story = &story;
            async move {
                let name = format!("job-{i:04}");
                story.create(&name, story.spec("tail.jsonl", &format!("out-{i}"))).await;
                (name, Instant::now())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let burst_secs = burst_start.elapsed().as_secs_f64();

    story
        .wait("every job's first status", Duration::from_secs(300), async || {
            let seen = seen.lock().expect("seen");
            created.iter().all(|(name, _)| seen.contains_key(name))
        })
        .await;
    watch.abort();

    // Each job of the burst waits in the queue, told where it stands; none started.
    let jobs = story.jobs().list(&Default::default()).await.expect("list jobs").items;
    let mut queued = 0;
    for job in jobs.iter().filter(|j| j.metadata.name.as_deref() != Some("head")) {
        let st = job.status.as_ref().expect("status");
        if st.phase.as_str() == "Pending" {
            let (_, why, message) = condition_status(job, condition::READY).expect("a Ready condition");
            assert_eq!(why, reason::QUEUED, "{:?}", job.metadata.name);
            assert!(message.starts_with("queued: position"), "{message}");
            queued += 1;
        }
    }
    let runners = story.pods().list(&Default::default()).await.expect("pods").items;
    let running_jobs: std::collections::BTreeSet<String> = runners
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(barge_api::batchjob::labels::JOB).cloned())
        .collect();
    assert!(running_jobs.len() <= 2, "at most the head and the one after it have pods: {running_jobs:?}");
    assert!(queued >= n - 1, "{queued} of {n} jobs are queued");

    let seen = seen.lock().expect("seen").clone();
    let mut latency: Vec<f64> =
        created.iter().map(|(name, at)| seen[name].saturating_duration_since(*at).as_secs_f64()).collect();
    latency.sort_by(f64::total_cmp);
    println!(
        "reconcile latency over {n} jobs created in {burst_secs:.1} s ({concurrency} at a time): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        latency.last().copied().unwrap_or_default()
    );
}
