//! Suspend and resume, cancel, the completion window, and deleting a job.

use std::time::Duration;

use barge_api::batchjob::{BatchingSpec, Phase, ShardPhase};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::faults::{assert_exactly_once, wait_completed_at_least};
use crate::harness::*;

async fn slow_job(story: &Story, name: &str, n: usize, window: Option<&str>) {
    story.put(&format!("{name}.jsonl"), requests(n, name)).await;
    let mut spec = story.spec(&format!("{name}.jsonl"), &format!("{name}-out"));
    spec.batching =
        Some(BatchingSpec { checkpoint_every: Some(40), max_batch_size: Some(8), ..Default::default() });
    if let Some(w) = window {
        spec.completion_window = w.into();
    }
    story.create(name, spec).await;
}

async fn patch_spec(story: &Story, name: &str, spec: serde_json::Value) {
    story
        .jobs()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .expect("patch spec");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_job_stops_its_pods_and_resumes_where_it_stopped() {
    let mut story = Story::new("suspend").await;
    story.install_operator(&[]).await;
    slow_job(&story, "pause", 600, None).await;
    wait_completed_at_least(&story, "pause", 40).await;
    patch_spec(&story, "pause", json!({"suspend": true})).await;
    let job = story.wait_phase("pause", "Suspended", Duration::from_secs(120)).await;
    let st = job.status.expect("status");
    assert!(st.request_counts.completed >= 40);
    assert!(st.shards.iter().all(|s| s.phase == ShardPhase::Stopped));
    // Suspended means nothing runs: a pod still listed has exited and is only being removed.
    let pods = story.pods().list(&Default::default()).await.expect("pods").items;
    let running: Vec<_> = pods
        .iter()
        .filter(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .map(|p| &p.metadata.name)
        .collect();
    assert!(running.is_empty(), "a suspended job keeps no running pod: {running:?}");
    story
        .wait("the suspended job's pods to be removed", Duration::from_secs(60), async || {
            story.pods().list(&Default::default()).await.is_ok_and(|l| l.items.is_empty())
        })
        .await;

    patch_spec(&story, "pause", json!({"suspend": false})).await;
    let job = story.wait_phase("pause", "Succeeded", Duration::from_secs(300)).await;
    assert_eq!(job.status.expect("status").shards[0].restarts, 0, "a suspension is not a failure");
    assert_exactly_once(&story, "pause-out", 600).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_created_suspended_waits_untouched() {
    let mut story = Story::new("created-suspended").await;
    story.install_operator(&[]).await;
    story.put("in.jsonl", requests(3, "s")).await;
    let mut spec = story.spec("in.jsonl", "out");
    spec.suspend = true;
    story.create("later", spec).await;
    let job = story.wait_phase("later", "Suspended", Duration::from_secs(60)).await;
    assert!(job.status.expect("status").start_time.is_none());
    assert!(story.pods().list(&Default::default()).await.expect("pods").items.is_empty());
    patch_spec(&story, "later", json!({"suspend": false})).await;
    story.wait_phase("later", "Succeeded", Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_keeps_its_partial_results_and_counts_the_rest_cancelled() {
    let mut story = Story::new("cancel").await;
    story.install_operator(&[]).await;
    slow_job(&story, "stop", 600, None).await;
    wait_completed_at_least(&story, "stop", 40).await;
    patch_spec(&story, "stop", json!({"cancel": true})).await;
    let job = story.wait_phase("stop", "Cancelled", Duration::from_secs(180)).await;
    let c = job.status.clone().expect("status").request_counts;
    assert!(c.completed >= 40 && c.cancelled > 0, "{c:?}");
    assert_eq!(c.completed + c.failed + c.cancelled, 600, "{c:?}");
    let results = story.get_jsonl("stop-out/results.jsonl").await;
    assert_eq!(results.len() as u64, c.completed);
    let manifest: serde_json::Value =
        serde_json::from_slice(&story.get("stop-out/manifest.json").await.expect("manifest")).expect("json");
    assert_eq!(manifest["partial"], true);
    assert_eq!(job.status.expect("status").phase, Phase::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passed_completion_window_expires_what_is_left() {
    let mut story = Story::new("expiry").await;
    story.install_operator(&[]).await;
    slow_job(&story, "late", 3000, Some("8s")).await;
    let job = story.wait_phase("late", "Expired", Duration::from_secs(180)).await;
    let c = job.status.expect("status").request_counts;
    assert!(c.expired > 0, "{c:?}");
    assert_eq!(c.completed + c.failed + c.expired, 3000, "{c:?}");
    assert!(story.get("late-out/manifest.json").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_removes_its_pods_and_keeps_its_output() {
    let mut story = Story::new("delete").await;
    story.install_operator(&[]).await;
    slow_job(&story, "gone", 600, None).await;
    wait_completed_at_least(&story, "gone", 40).await;
    delete_job(&story, "gone").await;
    story
        .wait("the job's pods to be garbage-collected", Duration::from_secs(120), async || {
            story.pods().list(&Default::default()).await.map(|l| l.items.is_empty()).unwrap_or(false)
        })
        .await;
    assert!(story.get("gone-out/_barge/job.json").await.is_some(), "the S3 output stays");
}
