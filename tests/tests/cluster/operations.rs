//! Running the operator for real: queue limits, two replicas, and the operator as the Helm chart
//! installs it.

use std::time::Duration;

use barge_api::batchjob::Phase;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_small_jobs_with_a_limit_of_five_all_complete_in_order() {
    let mut story = Story::new("queue").await;
    story.start_operator("queue:\n  maxRunningJobs: 5\n", &[]);
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

async fn holder(story: &Story) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(story.client.clone(), &story.ns);
    leases.get_opt("barge-operator").await.ok()??.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let mut story = Story::new("leader").await;
    let ns = story.ns.clone();
    let a =
        story.start_operator("", &["--leader-election", "--lease-namespace", &ns, "--identity", "replica-a"]);
    let b =
        story.start_operator("", &["--leader-election", "--lease-namespace", &ns, "--identity", "replica-b"]);
    story.wait("a leader", Duration::from_secs(60), async || holder(&story).await.is_some()).await;
    let leader = holder(&story).await.expect("leader");
    story.put("in.jsonl", requests(5, "l")).await;
    story.create("first", story.spec("in.jsonl", "out-1")).await;
    story.wait_phase("first", "Succeeded", Duration::from_secs(180)).await;

    let (dead, survivor) = if leader == "replica-a" { (a, "replica-b") } else { (b, "replica-a") };
    story.operators[dead].kill();
    story
        .wait("the standby to take the lease", Duration::from_secs(90), async || {
            holder(&story).await.as_deref() == Some(survivor)
        })
        .await;
    story.create("second", story.spec("in.jsonl", "out-2")).await;
    story.wait_phase("second", "Succeeded", Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_runs_as_the_chart_installs_it_and_cannot_read_secrets() {
    let story = Story::new("helm").await;
    let chart = format!("{}/../charts/barge", env!("CARGO_MANIFEST_DIR"));
    let release = format!("barge-{}", &story.ns[story.ns.len() - 6..]);
    let lint = std::process::Command::new("helm").args(["lint", &chart]).output().expect("helm runs");
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stdout));
    let (repo, tag) = split_image(&env("BARGE_E2E_OPERATOR_IMAGE"));
    let (runner_repo, runner_tag) = split_image(&runner_image());
    // The chart's own Deployment from the project's image, watching only this story's namespace
    // so that it stays out of the other stories' way.
    let install = std::process::Command::new("helm")
        .args(["install", &release, &chart, "-n", &story.ns, "--wait", "--timeout", "180s"])
        .args(["--set", "crds.enabled=false", "--set", &format!("serviceAccount.name={release}")])
        .args(["--set", &format!("image.repository={repo}"), "--set", &format!("image.tag={tag}")])
        .args(["--set", &format!("runner.image.repository={runner_repo}")])
        .args(["--set", &format!("runner.image.tag={runner_tag}")])
        .args(["--set", &format!("watchNamespace={}", story.ns), "--set", "progress.pollIntervalSeconds=1"])
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("helm runs");
    if !install.status.success() {
        story.dump().await;
        panic!("helm install: {}", String::from_utf8_lossy(&install.stderr));
    }
    let sa = format!("system:serviceaccount:{}:{release}", story.ns);
    let can = |verb: &str, what: &str| {
        let out = kubectl(&["auth", "can-i", verb, what, "--as", &sa, "-n", &story.ns]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("create", "pods"));
    assert!(can("patch", "batchjobs.barge.dev/status"));
    assert!(!can("get", "secrets"), "the operator must never read Secrets");
    assert!(!can("create", "deployments"));

    // `helm --wait` returned once the Deployment was Available: its pod is Ready, which the
    // operator reports only after it reached the API server with its ServiceAccount token.
    let operator = story
        .pods()
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list operator pods");
    let operator = operator.items.first().expect("the operator's pod");
    let container = &operator.spec.as_ref().expect("spec").containers[0];
    assert_eq!(container.image.as_deref(), Some(env("BARGE_E2E_OPERATOR_IMAGE").as_str()));

    story.put("in.jsonl", requests(5, "h")).await;
    story.create("charted", story.spec("in.jsonl", "out")).await;
    story.wait_phase("charted", "Succeeded", Duration::from_secs(180)).await;
    let events =
        kubectl(&["get", "events", "-n", &story.ns, "--field-selector", "reason=Succeeded", "-o", "name"]);
    assert!(!String::from_utf8_lossy(&events.stdout).trim().is_empty(), "the operator could publish Events");
    let name = operator.metadata.name.clone().expect("pod name");
    let logs = kubectl(&["logs", "-n", &story.ns, &name]);
    assert!(logs.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&logs.stderr));
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("charted"),
        "the operator's log, read through the kubelet, tells of the job"
    );
}

/// `repo/name:tag` into the chart's repository and tag values.
fn split_image(image: &str) -> (String, String) {
    let (repo, tag) = image.rsplit_once(':').expect("an image with a tag");
    (repo.to_string(), tag.to_string())
}
