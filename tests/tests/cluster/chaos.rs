//! Many faults at once: runner pods SIGKILLed, the operator SIGKILLed, etcd restarted, and a share
//! of the connections between the pods and S3 reset, stalled or cut short, all during one sharded
//! job. The results must be those of a clean run of the same job: every request once, the same
//! answers, restarts and compute counted once.
//!
//! CI runs a trimmed plan. `scripts/chaos.sh` runs the full one (10,000 requests, 10 runner kills,
//! 2 operator kills) and prints the figures; every knob is an environment variable
//! (`BARGE_CHAOS_*`, below), and the seed printed at the start replays a run's faults.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge_api::batchjob::{BatchJob, BatchingSpec, labels};
use barge_e2e::fault_proxy::{FaultPlan, FaultProxy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::harness::*;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone)]
struct Plan {
    requests: usize,
    shards: u32,
    runner_kills: usize,
    operator_kills: usize,
    etcd_restarts: usize,
    fault_rate: f64,
    seed: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Plan {
            requests: knob("BARGE_CHAOS_REQUESTS", 2000),
            shards: knob("BARGE_CHAOS_SHARDS", 4),
            runner_kills: knob("BARGE_CHAOS_RUNNER_KILLS", 4),
            operator_kills: knob("BARGE_CHAOS_OPERATOR_KILLS", 1),
            etcd_restarts: knob("BARGE_CHAOS_ETCD_RESTARTS", 1),
            fault_rate: knob("BARGE_CHAOS_FAULT_RATE", 0.1),
            seed: knob("BARGE_CHAOS_SEED", now as u64),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    KillRunner,
    KillOperator,
    RestartEtcd,
}

/// What a runner pod did, as the API server last showed it.
#[derive(Debug, Clone, Default)]
struct PodRecord {
    name: String,
    /// Seconds its container ran, once it ended.
    ran: Option<f64>,
    exit_code: Option<i32>,
}

/// Every runner pod of the job ever seen, by UID: replaced pods are deleted, so only a watch
/// started before the job sees them all.
type Ledger = Arc<Mutex<BTreeMap<String, PodRecord>>>;

fn watch_runner_pods(story: &Story, job: &str) -> (Ledger, tokio::task::JoinHandle<()>) {
    let ledger: Ledger = Arc::default();
    let selector = format!("{}={job},{}=runner", labels::JOB, labels::ROLE);
    let stream = watcher(story.pods(), watcher::Config::default().labels(&selector)).default_backoff();
    let into = ledger.clone();
    let task = tokio::spawn(async move {
        let mut pods = std::pin::pin!(stream.applied_objects());
        while let Some(next) = pods.next().await {
            let Ok(pod) = next else { continue };
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            let mut ledger = into.lock().expect("ledger");
            let rec = ledger.entry(uid).or_default();
            rec.name = pod.metadata.name.clone().unwrap_or_default();
            let ended = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.clone());
            if let Some(t) = ended {
                rec.exit_code = Some(t.exit_code);
                if let (Some(a), Some(b)) = (t.started_at, t.finished_at) {
                    rec.ran = Some(b.0.duration_since(a.0).as_secs_f64());
                }
            }
        }
    });
    (ledger, task)
}

fn running_container(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()) && c.container_id.is_some())
}

/// The answer of each request, without what differs between two runs by design (ids, times).
fn answers(rows: &[Value]) -> HashMap<String, Value> {
    rows.iter()
        .map(|r| {
            let id = r["custom_id"].as_str().expect("custom_id").to_string();
            let resp = &r["response"];
            let answer = serde_json::json!({
                "status": resp["status_code"],
                "data": resp["body"]["data"],
                "usage": resp["body"]["usage"],
            });
            (id, answer)
        })
        .collect()
}

fn chaos_spec(story: &Story, plan: &Plan, output: &str, endpoint: &str) -> barge_api::batchjob::BatchJobSpec {
    let mut spec = story.spec("chaos.jsonl", output);
    spec.parallelism = plan.shards;
    spec.backoff_limit = 30;
    // Small windows, so a kill loses little and there are many checkpoints to break.
    let per_shard = (plan.requests as u32).div_ceil(plan.shards);
    spec.batching = Some(BatchingSpec {
        checkpoint_every: Some((per_shard / 12).max(10)),
        max_batch_size: Some(8),
        ..Default::default()
    });
    if let Some(storage) = spec.storage.as_mut() {
        storage.endpoint = Some(endpoint.to_string());
    }
    spec
}

async fn completed(story: &Story, name: &str) -> (u64, bool) {
    match story.jobs().get(name).await {
        Ok(BatchJob { status: Some(s), .. }) => (s.request_counts.completed, s.phase.as_str() == "Succeeded"),
        _ => (0, false),
    }
}

/// Waits until the job has done `at_least` requests; false if it finished first.
async fn wait_progress(story: &Story, name: &str, at_least: u64) -> bool {
    let start = Instant::now();
    loop {
        let (done, finished) = completed(story, name).await;
        if finished {
            return false;
        }
        if done >= at_least {
            return true;
        }
        if start.elapsed() > Duration::from_secs(600) {
            story.dump().await;
            panic!("{name} made no progress to {at_least} requests in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGKILLs one running runner container of the job, chosen at random; waits for one to run.
async fn kill_a_runner(story: &Story, job: &str, rng: &mut ChaCha8Rng) -> String {
    let selector = format!("{}={job},{}=runner", labels::JOB, labels::ROLE);
    let start = Instant::now();
    loop {
        let mut pods: Vec<Pod> = story
            .pods()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(running_container)
            .collect();
        pods.shuffle(rng);
        for pod in &pods {
            if try_kill_container(pod).is_ok() {
                return pod.metadata.name.clone().unwrap_or_default();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no runner container of {job} ran for 2 minutes");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn restart_etcd() {
    let script = format!("{}/testbed/restart-etcd", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(script).arg("3").output().expect("restart-etcd runs");
    assert!(out.status.success(), "restart-etcd: {}", String::from_utf8_lossy(&out.stderr));
}

fn upstream_s3() -> SocketAddr {
    let url = env("AWS_ENDPOINT_URL");
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    hostport.parse().unwrap_or_else(|_| panic!("AWS_ENDPOINT_URL={url} is not http://IP:PORT"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_job_survives_kills_an_etcd_restart_and_a_flaky_network_with_a_clean_runs_results() {
    let plan = Plan::from_env();
    eprintln!("chaos plan: {plan:?} (BARGE_CHAOS_SEED={} replays its faults)", plan.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut story = Story::new("chaos").await;
    story.install_operator(&[]).await;
    story.put("chaos.jsonl", requests(plan.requests, "c")).await;

    // The reference: the same job on a clean network, undisturbed.
    let clean_start = Instant::now();
    story.create("clean", chaos_spec(&story, &plan, "clean-out", &pod_s3_endpoint())).await;
    story.wait_phase("clean", "Succeeded", Duration::from_secs(900)).await;
    let clean_secs = clean_start.elapsed().as_secs_f64();
    let clean = story.get_jsonl("clean-out/results.jsonl").await;

    let node_ip: std::net::IpAddr = env("BARGE_TESTBED_NODE_IP").parse().expect("a node IP");
    let proxy = FaultProxy::start(
        SocketAddr::new(node_ip, 0),
        upstream_s3(),
        FaultPlan { rate: plan.fault_rate, seed: plan.seed },
    )
    .await
    .expect("fault proxy");
    let (ledger, watch) = watch_runner_pods(&story, "chaos");

    let mut actions: Vec<Action> = std::iter::repeat_n(Action::KillRunner, plan.runner_kills)
        .chain(std::iter::repeat_n(Action::KillOperator, plan.operator_kills))
        .chain(std::iter::repeat_n(Action::RestartEtcd, plan.etcd_restarts))
        .collect();
    actions.shuffle(&mut rng);

    let chaos_start = Instant::now();
    story.create("chaos", chaos_spec(&story, &plan, "chaos-out", &format!("http://{}", proxy.addr))).await;
    let mut log = Vec::new();
    let n = plan.requests as f64;
    for (k, action) in actions.iter().enumerate() {
        // Spread over 5–80% of the job, with some jitter, so faults land in every phase of a shard.
        let share = 0.05 + 0.75 * (k as f64 + rng.random_range(0.0..0.5)) / actions.len() as f64;
        let at = (n * share) as u64;
        assert!(
            wait_progress(&story, "chaos", at).await,
            "the job finished before fault {} of {} ({action:?} at {at} requests): give it more requests",
            k + 1,
            actions.len()
        );
        let what = match action {
            Action::KillRunner => format!("killed runner {}", kill_a_runner(&story, "chaos", &mut rng).await),
            Action::KillOperator => {
                let pods = story.operator_pods().await;
                let op = pods.iter().find(|p| running_container(p)).expect("a running operator");
                kill_container(op);
                "killed the operator".to_string()
            }
            Action::RestartEtcd => {
                restart_etcd();
                "restarted etcd".to_string()
            }
        };
        eprintln!("chaos: at {at} completed requests, {what}");
        log.push(what);
    }
    let job = story.wait_phase("chaos", "Succeeded", Duration::from_secs(1800)).await;
    let chaos_secs = chaos_start.elapsed().as_secs_f64();
    // The last pods' final states reach the watch a moment after the job's phase.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let st = job.status.expect("status");

    // The results are the clean run's: every request once, the same answers.
    let rows = story.get_jsonl("chaos-out/results.jsonl").await;
    assert_eq!(rows.len(), plan.requests, "a request is missing or doubled");
    let (got, want) = (answers(&rows), answers(&clean));
    assert_eq!(got.len(), plan.requests, "a request appears twice");
    let differing: Vec<&String> = want.keys().filter(|id| got.get(*id) != want.get(*id)).collect();
    assert!(
        differing.is_empty(),
        "{} answers differ from the clean run's, e.g. {:?}",
        differing.len(),
        differing.first()
    );
    assert!(story.get("chaos-out/errors.jsonl").await.unwrap_or_default().is_empty(), "no request failed");
    assert_eq!(st.request_counts.completed, plan.requests as u64);
    assert_eq!(st.request_counts.failed, 0);

    // Restarts and compute counted once: every replaced pod is one restart, and the pods' own
    // runtimes add up to what the status bills.
    let pods = ledger.lock().expect("ledger").clone();
    let replaced = pods.len() - plan.shards as usize;
    let restarts: u32 = st.shards.iter().map(|s| s.restarts).sum();
    assert_eq!(restarts as usize, replaced, "restarts counted once per replaced pod: {pods:#?}");
    let kills = log.iter().filter(|l| l.starts_with("killed runner")).count();
    assert!(replaced >= kills, "each killed runner was replaced");
    let ran: f64 = pods.values().filter_map(|p| p.ran).sum();
    let billed: f64 = st.shards.iter().map(|s| s.ended_pod_seconds + s.pod_seconds).sum();
    assert!(
        (billed - ran).abs() <= pods.len() as f64,
        "billed {billed} pod-seconds, the pods ran {ran}: {pods:#?}"
    );
    let self_failed: Vec<&PodRecord> =
        pods.values().filter(|p| p.exit_code.is_some_and(|c| c != 0 && c != 137)).collect();

    println!("chaos figures (seed {}):", plan.seed);
    println!("  requests {} over {} shards; faults: {}", plan.requests, plan.shards, log.join(", "));
    println!("  S3 through the proxy: {}", proxy.stats.summary());
    println!("  clean run {clean_secs:.0} s, chaos run {chaos_secs:.0} s");
    println!(
        "  results identical to the clean run's: {} of {}, 0 lost, 0 duplicated",
        plan.requests - differing.len(),
        plan.requests
    );
    println!(
        "  runner pods {} ({} replaced, {} by kills, {} failed by themselves: {:?}); restarts counted {}",
        pods.len(),
        replaced,
        kills,
        self_failed.len(),
        self_failed.iter().map(|p| (&p.name, p.exit_code)).collect::<Vec<_>>(),
        restarts
    );
    println!("  pod-seconds billed {billed:.0}, ran {ran:.1}");
}
