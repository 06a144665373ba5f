//! Running the operator for real, as the Helm chart installs it: queue limits, two replicas, and
//! what its ServiceAccount may do.

use std::time::Duration;

use barge_api::batchjob::Phase;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_small_jobs_with_a_limit_of_five_all_complete_in_order() {
    let mut story = Story::new("queue").await;
    story.install_operator(&["queue.maxRunningJobs=5"]).await;
    story.put("small.jsonl", requests(3, "small")).await;
    for i in 0..50 {
        story.create(&format!("job-{i:02}"), story.spec("small.jsonl", &format!("out-{i:02}"))).await;
    }
    let mut most_running = 0;
    story
        .wait("all 50 jobs to succeed", Duration::from_secs(600), async || {
            let Ok(jobs) = story.jobs().list(&Default::default()).await else { return false };
            let phases: Vec<Phase> =
                jobs.items.iter().map(|j| j.status.clone().unwrap_or_default().phase).collect();
            let running = phases.iter().filter(|p| matches!(p, Phase::Running | Phase::Finalizing)).count();
            let live_pods = story
                .pods()
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| {
                            matches!(
                                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                                Some("Pending" | "Running")
                            )
                        })
                        .count()
                })
                .unwrap_or(0);
            assert!(running <= 5, "{running} jobs running at once");
            assert!(live_pods <= 5, "{live_pods} pods live at once");
            most_running = most_running.max(running);
            phases.iter().filter(|p| **p == Phase::Succeeded).count() == 50
        })
        .await;
    assert!(most_running >= 2, "the queue let jobs run side by side (at most {most_running})");
    let jobs = story.jobs().list(&Default::default()).await.expect("jobs").items;
    let mut starts: Vec<(String, k8s_openapi::jiff::Timestamp)> = jobs
        .iter()
        .map(|j| {
            (
                j.metadata.name.clone().unwrap_or_default(),
                j.status.as_ref().and_then(|s| s.start_time.clone()).expect("started").0,
            )
        })
        .collect();
    starts.sort();
    for pair in starts.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "{} started after {}", pair[0].0, pair[1].0);
    }
}

/// The operator plans a job's status from its watch cache, which lags its own writes and
/// another replica's. A write planned from an older view of the job is refused, so counts such
/// as `restarts` never go back and a paused old leader cannot overwrite a newer status.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_planned_from_a_stale_view_is_never_written() {
    use barge_api::batchjob::{BatchJobStatus, Phase, ShardStatus};
    let story = Story::new("stale-status").await;
    let created = story.create("stale", story.spec("in.jsonl", "out")).await;
    let newer = BatchJobStatus {
        phase: Phase::Running,
        shards: vec![ShardStatus { restarts: 2, ..Default::default() }],
        ..Default::default()
    };
    let wrote = barge_operator::controller::patch_status(&story.client, &created, &newer).await;
    assert!(wrote.expect("the write goes through"), "planned from the current object");
    let older = BatchJobStatus {
        phase: Phase::Running,
        shards: vec![ShardStatus { restarts: 1, ..Default::default() }],
        ..Default::default()
    };
    let wrote = barge_operator::controller::patch_status(&story.client, &created, &older).await;
    assert!(!wrote.expect("a conflict is not an error"), "planned from the object before the last write");
    let now = story.jobs().get("stale").await.expect("job");
    assert_eq!(now.status.expect("status").shards[0].restarts, 2, "the newer count stays");
}

async fn holder(story: &Story) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(story.client.clone(), &story.operator_ns);
    leases.get_opt("barge-operator").await.ok()??.spec?.holder_identity
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_a_standby_takes_over_when_its_pod_is_deleted() {
    let mut story = Story::new("leader").await;
    story.install_operator(&["replicas=2"]).await;
    story.wait("a leader", Duration::from_secs(60), async || holder(&story).await.is_some()).await;
    let leader = holder(&story).await.expect("leader");
    let replicas = names(&story.operator_pods().await);
    assert_eq!(replicas.len(), 2);
    assert!(replicas.contains(&leader), "the lease names a replica's pod: {leader} of {replicas:?}");
    story.put("in.jsonl", requests(5, "l")).await;
    story.create("first", story.spec("in.jsonl", "out-1")).await;
    story.wait_phase("first", "Succeeded", Duration::from_secs(180)).await;

    let deleted =
        kubectl(&["delete", "pod", "-n", &story.operator_ns, &leader, "--grace-period=0", "--force"]);
    assert!(deleted.status.success(), "kubectl delete: {}", String::from_utf8_lossy(&deleted.stderr));
    story
        .wait("another replica to take the lease", Duration::from_secs(90), async || {
            holder(&story).await.is_some_and(|h| h != leader)
        })
        .await;
    let new_leader = holder(&story).await.expect("leader");
    assert!(names(&story.operator_pods().await).contains(&new_leader), "{new_leader} is a live replica");
    story.create("second", story.spec("in.jsonl", "out-2")).await;
    story.wait_phase("second", "Succeeded", Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charted_operator_runs_on_its_own_rights_cannot_read_secrets_and_logs_its_jobs() {
    let mut story = Story::new("helm").await;
    let chart = format!("{}/../charts/barge", env!("CARGO_MANIFEST_DIR"));
    let lint = std::process::Command::new("helm").args(["lint", &chart]).output().expect("helm runs");
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stdout));
    story.install_operator(&[]).await;
    let sa = format!("system:serviceaccount:{}:barge-operator", story.operator_ns);
    let can = |verb: &str, what: &str, ns: &str| {
        let out = kubectl(&["auth", "can-i", verb, what, "--as", &sa, "-n", ns]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("create", "pods", &story.ns));
    assert!(can("patch", "batchjobs.barge.dev/status", &story.ns));
    assert!(!can("get", "secrets", &story.ns), "the operator must never read Secrets");
    assert!(!can("create", "deployments", &story.ns));
    assert!(!can("create", "pods", "default"), "a namespaced release has no rights outside its namespace");

    // `helm --wait` returned once the Deployment was Available: its pod is Ready, which the
    // operator reports only after it reached the API server with its ServiceAccount token.
    let operator = story.operator_pods().await.into_iter().next().expect("the operator's pod");
    let container = &operator.spec.as_ref().expect("spec").containers[0];
    assert_eq!(container.image.as_deref(), Some(env("BARGE_E2E_OPERATOR_IMAGE").as_str()));

    story.put("in.jsonl", requests(5, "h")).await;
    story.create("charted", story.spec("in.jsonl", "out")).await;
    story.wait_phase("charted", "Succeeded", Duration::from_secs(180)).await;
    let events =
        kubectl(&["get", "events", "-n", &story.ns, "--field-selector", "reason=Succeeded", "-o", "name"]);
    assert!(!String::from_utf8_lossy(&events.stdout).trim().is_empty(), "the operator could publish Events");
    let name = operator.metadata.name.clone().expect("pod name");
    let logs = kubectl(&["logs", "-n", &story.operator_ns, &name]);
    assert!(logs.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&logs.stderr));
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("charted"),
        "the operator's log, read through the kubelet, tells of the job"
    );
}
