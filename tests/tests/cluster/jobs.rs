//! A user applies a BatchJob and gets results: one shard, three shards, bad lines, bad specs.

use std::time::Duration;

use barge_api::batchjob::{Phase, condition, reason};
use serde_json::Value;

use crate::harness::*;

// The stories' jobs hold no GPU (the test node has none), so they are priced by CPU-hour.
const PRICES: &[&str] = &["pricing.cpuPerHour=3.6"];

fn local_run(input: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let inp = dir.path().join("in.jsonl");
    std::fs::write(&inp, input).expect("write input");
    let out = dir.path().join("out");
    let ok = std::process::Command::new(bin_dir().join("barge-runner"))
        .args(["run", "--model", &env("BARGE_MINILM_DIR"), "--input"])
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .env("BARGE_LOG_FORMAT", "json")
        .output()
        .expect("runner runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::read_to_string(out.join("results.jsonl"))
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn embedding(record: &Value) -> Vec<f64> {
    record["response"]["body"]["data"][0]["embedding"]
        .as_array()
        .expect("embedding array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

/// Same requests in the same order, the same vectors (batching may move the last digits).
fn assert_same_results(cluster: &[Value], local: &[Value]) {
    assert_eq!(cluster.len(), local.len());
    for (c, l) in cluster.iter().zip(local) {
        assert_eq!(c["custom_id"], l["custom_id"]);
        let (a, b) = (embedding(c), embedding(l));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (norm(&a) * norm(&b));
        assert!(cos > 0.99999, "{}: cosine {cos}", c["custom_id"]);
    }
}

async fn completes_like_a_local_run(story_name: &str, parallelism: u32, n: usize) {
    let mut story = Story::new(story_name).await;
    story.install_operator(PRICES).await;
    let input = requests(n, "q");
    story.put("in/requests.jsonl", input.clone()).await;
    let mut spec = story.spec("in/requests.jsonl", "out");
    spec.parallelism = parallelism;
    story.create("embed", spec).await;

    let waited =
        kubectl(&["wait", "--for=condition=Complete", "bj/embed", "-n", &story.ns, "--timeout=300s"]);
    if !waited.status.success() {
        story.dump().await;
        panic!("kubectl wait failed: {}", String::from_utf8_lossy(&waited.stderr));
    }
    let job = story.jobs().get("embed").await.expect("job");
    let st = job.status.clone().expect("status");
    assert_eq!(st.phase, Phase::Succeeded);
    let c = st.request_counts;
    assert_eq!((c.total, c.completed, c.failed), (Some(n as u64), n as u64, 0));
    assert!(st.tokens.prompt > n as u64, "prompt tokens counted: {}", st.tokens.prompt);
    assert_eq!(st.shards.len(), parallelism as usize);
    assert!(st.shards.iter().all(|s| s.restarts == 0));
    let cost = st.cost.expect("cost");
    assert_eq!((cost.unit.as_str(), cost.per_hour, cost.source.as_str()), ("cpu", 3.6, "priceTable/cpu"));
    // What the runner pods ran by their own container timestamps (whole seconds: a fast pod
    // may show 0), within a second per pod; the finalize pod is not charged.
    let pods = story.pods().list(&Default::default()).await.expect("pods").items;
    let truth = crate::faults::runner_seconds(&pods);
    assert!(
        (cost.unit_seconds - truth).abs() <= f64::from(parallelism),
        "cost counted {} CPU-seconds, the runner pods ran {truth}",
        cost.unit_seconds
    );
    assert!((cost.amount - cost.unit_seconds / 3600.0 * 3.6).abs() < 1e-6);
    assert!(cost.per_million_tokens.is_some());
    let outputs = st.outputs.expect("outputs");
    assert_eq!(outputs.results, format!("s3://{}/out/results.jsonl", story.bucket));

    let results = story.get_jsonl("out/results.jsonl").await;
    assert_same_results(&results, &local_run(&input));
    let manifest: Value =
        serde_json::from_slice(&story.get("out/manifest.json").await.expect("manifest")).expect("json");
    assert_eq!(manifest["requestCounts"]["completed"], n as u64);

    let table = kubectl(&["get", "bj", "-n", &story.ns]);
    let table = String::from_utf8_lossy(&table.stdout);
    for column in ["PHASE", "PROGRESS", "ETA", "COST", "AGE", "Succeeded", &format!("{n}/{n}"), "USD"] {
        assert!(table.contains(column), "`kubectl get bj` lacks {column}:\n{table}");
    }
    // The job's pods are done and stay for their logs; none runs. A one-shard runner merges
    // its own output, so only a sharded job has a finalize pod.
    let pods = story.pods().list(&Default::default()).await.expect("pods");
    let finalize = usize::from(parallelism > 1);
    assert_eq!(pods.items.len(), parallelism as usize + finalize, "one pod per shard, and the finalize pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shard_job_completes_with_the_results_of_a_local_run() {
    completes_like_a_local_run("one-shard", 1, 40).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_shard_job_merges_into_the_results_of_a_local_run() {
    completes_like_a_local_run("three-shards", 3, 60).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_lines_become_error_records_and_failed_counts() {
    let mut story = Story::new("malformed").await;
    story.install_operator(&[]).await;
    let mut input = requests(10, "ok");
    input.push_str("{not json\n");
    input.push_str(r#"{"method":"POST","url":"/v1/embeddings","body":{"input":"no id"}}"#);
    input.push('\n');
    story.put("in.jsonl", input).await;
    story.create("bad-lines", story.spec("in.jsonl", "out")).await;
    let job = story.wait_phase("bad-lines", "Succeeded", Duration::from_secs(240)).await;
    let c = job.status.expect("status").request_counts;
    assert_eq!((c.completed, c.failed, c.total), (10, 2, Some(12)));
    let errors = story.get_jsonl("out/errors.jsonl").await;
    let codes: Vec<&str> = errors.iter().filter_map(|e| e["error"]["code"].as_str()).collect();
    assert_eq!(codes, ["invalid_json", "missing_custom_id"]);
    assert_eq!(errors[0]["error"]["line"], 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_the_schema_cannot_catch_fails_with_the_field_named_and_one_event() {
    let mut story = Story::new("bad-spec").await;
    story.install_operator(&[]).await;
    let mut spec = story.spec("in.jsonl", "out/results.jsonl");
    spec.completion_window = "0s".into();
    story.create("bad", spec).await;
    let job = story.wait_phase("bad", "Failed", Duration::from_secs(60)).await;
    let (status, why, message) = condition_status(&job, condition::FAILED).expect("Failed condition");
    assert_eq!((status.as_str(), why.as_str()), ("True", reason::INVALID_SPEC));
    assert!(message.starts_with("spec.completionWindow"), "{message}");
    assert_eq!(condition_status(&job, condition::STALLED).map(|c| c.0), Some("True".into()));
    // Settles: no pods, a single Failed event, no further status writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = story.jobs().get("bad").await.expect("job");
    assert_eq!(again.metadata.resource_version, job.metadata.resource_version, "no requeue storm");
    assert!(story.pods().list(&Default::default()).await.expect("pods").items.is_empty());
    let events =
        kubectl(&["get", "events", "-n", &story.ns, "--field-selector", "reason=Failed", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&events.stdout).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_credentials_secret_fails_the_job_with_a_clear_reason() {
    let mut story = Story::new("no-secret").await;
    story.install_operator(&[]).await;
    story.put("in.jsonl", requests(3, "x")).await;
    let mut spec = story.spec("in.jsonl", "out");
    if let Some(s) = spec.storage.as_mut() {
        s.credentials_secret = Some("does-not-exist".into());
    }
    story.create("nosecret", spec).await;
    let job = story.wait_phase("nosecret", "Failed", Duration::from_secs(90)).await;
    let (_, why, message) = condition_status(&job, condition::FAILED).expect("Failed condition");
    assert_eq!(why, reason::MISSING_SECRET);
    assert!(message.contains("secret \"does-not-exist\" not found"), "{message}");
}

/// Pod creation refused by admission for a PriorityClass that does not exist once retried
/// forever, the job Running with no word of why.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_priority_class_fails_the_job_naming_the_field() {
    let mut story = Story::new("no-priority").await;
    story.install_operator(&[]).await;
    story.put("in.jsonl", requests(3, "p")).await;
    let mut spec = story.spec("in.jsonl", "out");
    spec.priority_class_name = Some("no-such-class".into());
    story.create("prio", spec).await;
    let job = story.wait_phase("prio", "Failed", Duration::from_secs(90)).await;
    let (_, why, message) = condition_status(&job, condition::FAILED).expect("Failed condition");
    assert_eq!(why, reason::INVALID_SPEC);
    assert!(message.contains("spec.priorityClassName") && message.contains("no-such-class"), "{message}");
}

/// A full ResourceQuota: the API server's admission refuses every runner pod. The job
/// keeps trying, says why in its Ready condition, and finishes once the quota is raised.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_quota_is_shown_as_the_reason_until_it_is_raised() {
    let mut story = Story::new("quota").await;
    story.install_operator(&[]).await;
    let quota = |pods: u32| {
        serde_json::json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
                           "spec": {"hard": {"pods": pods.to_string()}}})
    };
    let path = story.scratch.path().join("quota.json");
    std::fs::write(&path, quota(0).to_string()).expect("write");
    let out = kubectl(&["apply", "-n", &story.ns, "-f", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The quota counts only once its controller has seen it.
    story
        .wait("the quota's first count", Duration::from_secs(30), async || {
            let out = kubectl(&[
                "get",
                "resourcequota",
                "pods",
                "-n",
                &story.ns,
                "-o",
                "jsonpath={.status.hard.pods}",
            ]);
            String::from_utf8_lossy(&out.stdout) == "0"
        })
        .await;
    story.put("in.jsonl", requests(200, "q")).await;
    let mut spec = story.spec("in.jsonl", "out");
    spec.parallelism = 2;
    story.create("quota", spec).await;
    let job = story
        .wait_job("quota", "reason PodCreateRefused", Duration::from_secs(90), |j| {
            condition_status(j, condition::READY).is_some_and(|c| c.1 == reason::POD_CREATE_REFUSED)
        })
        .await;
    let (status, _, message) = condition_status(&job, condition::READY).expect("Ready");
    assert_eq!(status, "False");
    assert!(message.contains("quota") && message.contains("quota-shard-"), "{message}");

    std::fs::write(&path, quota(10).to_string()).expect("write");
    let out = kubectl(&["apply", "-n", &story.ns, "-f", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    story.wait_phase("quota", "Succeeded", Duration::from_secs(240)).await;
    assert_eq!(story.get_jsonl("out/results.jsonl").await.len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_job_on_a_busy_output_fails_naming_the_first_which_succeeds() {
    let mut story = Story::new("same-output").await;
    story.install_operator(&[]).await;
    story.put("a.jsonl", requests(200, "a")).await;
    story.put("b.jsonl", requests(5, "b")).await;
    story.create("first", story.spec("a.jsonl", "shared")).await;
    story.wait_phase("first", "Running", Duration::from_secs(60)).await;
    story.create("second", story.spec("b.jsonl", "shared/")).await;
    let job = story.wait_phase("second", "Failed", Duration::from_secs(60)).await;
    let (_, why, message) = condition_status(&job, condition::FAILED).expect("Failed condition");
    assert_eq!(why, reason::OUTPUT_IN_USE);
    assert!(message.contains(&format!("{}/first", story.ns)), "{message}");
    story.wait_phase("first", "Succeeded", Duration::from_secs(180)).await;
    let ids: Vec<String> = story
        .get_jsonl("shared/results.jsonl")
        .await
        .iter()
        .map(|r| r["custom_id"].as_str().expect("custom_id").to_string())
        .collect();
    assert_eq!(ids, (0..200).map(|i| format!("a-{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_enforces_the_schema_and_immutability() {
    let mut story = Story::new("schema").await;
    story.install_operator(&[]).await;
    let bad = serde_json::json!({
        "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "bad"},
        "spec": {"model": {"uri": "http://nope"}, "input": {"uri": "s3://b/in.jsonl"}, "output": {"uri": "s3://b/out/"},
                 "parallelism": 0},
    });
    let path = story.scratch.path().join("bad.json");
    std::fs::write(&path, bad.to_string()).expect("write");
    let out = kubectl(&["apply", "-n", &story.ns, "-f", &path.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("spec.model.uri"), "{err}");
    assert!(err.contains("spec.parallelism"), "{err}");

    // Once started, the work order is fixed.
    story.put("in.jsonl", requests(400, "im")).await;
    story.create("fixed", story.spec("in.jsonl", "out")).await;
    story
        .wait_job("fixed", "a start time", Duration::from_secs(60), |j| {
            j.status.as_ref().is_some_and(|s| s.start_time.is_some())
        })
        .await;
    let patch = kubectl(&[
        "patch",
        "bj/fixed",
        "-n",
        &story.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"parallelism":4}}"#,
    ]);
    let err = String::from_utf8_lossy(&patch.stderr);
    assert!(!patch.status.success(), "parallelism changed on a running job");
    assert!(err.contains("cannot change once the job has started"), "{err}");
    // Every field a resume depends on is fixed too, each refusal naming its field.
    for (field, patch) in [
        ("spec.batching", r#"{"spec":{"batching":{"checkpointEvery":7}}}"#),
        ("spec.defaults", r#"{"spec":{"defaults":{"maxTokens":9}}}"#),
        ("spec.image", r#"{"spec":{"image":"example.org/other:1"}}"#),
        ("spec.storage", r#"{"spec":{"storage":{"region":"eu-west-1"}}}"#),
    ] {
        let out = kubectl(&["patch", "bj", "fixed", "-n", &story.ns, "--type=merge", "-p", patch]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field} changed on a running job");
        assert!(err.contains(&format!("{field} cannot change once the job has started")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_cannot_be_pulled_fails_the_job_with_a_clear_reason() {
    let mut story = Story::new("bad-image").await;
    story.install_operator(&[]).await;
    story.put("in.jsonl", requests(3, "i")).await;
    let mut spec = story.spec("in.jsonl", "out");
    spec.image = Some("registry.example/barge-runner-typo:1".into());
    story.create("typo", spec).await;
    let job = story.wait_phase("typo", "Failed", Duration::from_secs(90)).await;
    let (_, why, message) = condition_status(&job, condition::FAILED).expect("Failed condition");
    assert_eq!(why, reason::IMAGE_PULL);
    assert!(message.contains("registry.example/barge-runner-typo:1"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_chat_job_on_smollm2_reports_tokens_and_anthropic_results() {
    let mut story = Story::new("chat").await;
    story.install_operator(PRICES).await;
    let n = 12;
    let input: String = (0..n)
        .map(|i| {
            serde_json::json!({"custom_id": format!("m-{i}"), "params": {"model": "smollm2", "max_tokens": 12,
                "temperature": 0, "messages": [{"role": "user", "content": format!("Give me a fact about the number {i}.")}]}})
            .to_string()
                + "\n"
        })
        .collect();
    story.put("in/messages.jsonl", input).await;
    let mut spec = story.spec("in/messages.jsonl", "out");
    spec.model.uri = ensure_gguf(&story.s3).await;
    spec.model.name = Some("smollm2-135m".into());
    spec.input.format = barge_api::batchjob::InputFormat::Anthropic;
    spec.parallelism = 2;
    story.create("chat", spec).await;
    let job = story.wait_phase("chat", "Succeeded", Duration::from_secs(300)).await;
    let st = job.status.expect("status");
    assert_eq!((st.request_counts.completed, st.request_counts.failed), (n as u64, 0));
    assert!(st.tokens.prompt > 20 * n as u64, "prompts include the chat template: {}", st.tokens.prompt);
    let results = story.get_jsonl("out/results.jsonl").await;
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["custom_id"], format!("m-{i}"));
        let m = &r["result"]["message"];
        assert_eq!(
            (r["result"]["type"].as_str(), m["model"].as_str()),
            (Some("succeeded"), Some("smollm2-135m"))
        );
        assert!(m["content"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
    }
    let output_tokens: u64 =
        results.iter().filter_map(|r| r["result"]["message"]["usage"]["output_tokens"].as_u64()).sum();
    assert_eq!(st.tokens.completion, output_tokens, "the status counts the tokens the results report");
    assert!(output_tokens > 0 && output_tokens <= 12 * n as u64, "{output_tokens}");
}
