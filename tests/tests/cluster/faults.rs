//! Things break mid-job and nothing is lost: a runner is killed, the operator is killed.

use std::collections::HashSet;
use std::time::Duration;

use barge_api::batchjob::{BatchJob, BatchingSpec};
use k8s_openapi::api::core::v1::Pod;

use crate::harness::*;

/// A job slow enough to interrupt: checkpoints every 40 requests.
async fn long_job(story: &Story, name: &str, n: usize, parallelism: u32) {
    story.put(&format!("{name}.jsonl"), requests(n, name)).await;
    let mut spec = story.spec(&format!("{name}.jsonl"), &format!("{name}-out"));
    spec.parallelism = parallelism;
    spec.batching =
        Some(BatchingSpec { checkpoint_every: Some(40), max_batch_size: Some(8), ..Default::default() });
    story.create(name, spec).await;
}

pub async fn wait_completed_at_least(story: &Story, name: &str, n: u64) -> BatchJob {
    story
        .wait_job(name, &format!("{n} completed requests"), Duration::from_secs(240), |j| {
            j.status.as_ref().is_some_and(|s| s.request_counts.completed >= n)
        })
        .await
}

/// Every request of the input appears exactly once in the results.
pub async fn assert_exactly_once(story: &Story, output: &str, n: usize) {
    let results = story.get_jsonl(&format!("{output}/results.jsonl")).await;
    let ids: Vec<String> =
        results.iter().map(|r| r["custom_id"].as_str().expect("custom_id").to_string()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a request appears twice");
    assert_eq!(ids.len(), n, "a request is missing");
}

/// Seconds each runner pod of the job ran, from the pods' own container states.
pub fn runner_seconds(pods: &[Pod]) -> f64 {
    pods.iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("barge.dev/role")).map(String::as_str)
                == Some("runner")
        })
        .filter_map(|p| {
            let t = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .state
                .as_ref()?
                .terminated
                .clone()?;
            Some(t.finished_at?.0.duration_since(t.started_at?.0).as_secs_f64())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runner_is_replaced_and_resumes_with_every_request_exactly_once() {
    let mut story = Story::new("killed-runner").await;
    story.install_operator(&[]).await;
    long_job(&story, "kill", 600, 1).await;
    wait_completed_at_least(&story, "kill", 80).await;
    let pod = story.pods().get("kill-shard-0").await.expect("runner pod");
    kill_container(&pod);

    let job = story.wait_phase("kill", "Succeeded", Duration::from_secs(300)).await;
    let st = job.status.expect("status");
    assert_eq!(st.shards[0].restarts, 1, "the kill is counted as one restart");
    assert_eq!(st.request_counts.completed, 600);
    assert_exactly_once(&story, "kill-out", 600).await;
    // Both pods' runtimes are in the cost: the killed one's counted before it was replaced.
    let cost = st.cost.expect("cost");
    assert!(cost.unit_seconds >= 2.0, "{cost:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_mid_job_is_restarted_and_the_job_finishes_with_cost_counted_once() {
    let mut story = Story::new("operator-restart").await;
    story.install_operator(&[]).await;
    long_job(&story, "steady", 400, 2).await;
    wait_completed_at_least(&story, "steady", 40).await;
    let operator = story.operator_pods().await.into_iter().next().expect("the operator's pod");
    kill_container(&operator);

    let job = story.wait_phase("steady", "Succeeded", Duration::from_secs(300)).await;
    let st = job.status.expect("status");
    assert_eq!(st.request_counts.completed, 400);
    assert_exactly_once(&story, "steady-out", 400).await;
    let restarts: i32 = story
        .operator_pods()
        .await
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first().map(|c| c.restart_count))
        .sum();
    assert_eq!(restarts, 1, "the kubelet restarted the killed operator once");
    let pods = story.pods().list(&Default::default()).await.expect("pods").items;
    let truth = runner_seconds(&pods);
    let counted = st.cost.expect("cost").unit_seconds;
    // Whole seconds per pod, one GPU each: within a second per pod of what the pods say.
    assert!((counted - truth).abs() <= 2.0, "cost counted {counted} GPU-seconds, the pods ran {truth}");
}
