//! The test cluster as the scenarios use it: a namespace per story, the real operator and
//! runner binaries, MinIO buckets, and waits with timeouts that dump what the cluster saw when
//! they run out.
//!
//! Needs `tests/testbed/up` to have run (the README's test command does that) and
//! `BARGE_E2E_KUBECONFIG` to point at its kubeconfig. `BARGE_E2E_KEEP=1` keeps namespaces and
//! operator logs after a run, for debugging.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use barge_api::batchjob::{BatchJob, BatchJobSpec};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};
use serde_json::json;

pub const MODEL_BUCKET: &str = "barge-e2e-models";
pub const S3_SECRET: &str = "s3-credentials";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the end-to-end tests through scripts/test.sh, which brings the testbed up"
        )
    })
}

/// target/release, where cargo put the operator, runner and node agent.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/release/deps/<test>").to_path_buf()
}

/// The runner image the testbed's node imported (scripts/build-images.sh built it from this
/// checkout): every runner and finalize pod runs in a container from it.
pub fn runner_image() -> String {
    env("BARGE_E2E_RUNNER_IMAGE")
}

/// S3 as pods reach it: the node's address on the pods' network, not the host's loopback.
pub fn pod_s3_endpoint() -> String {
    env("BARGE_TESTBED_POD_S3")
}

pub fn kubeconfig() -> PathBuf {
    PathBuf::from(env("BARGE_E2E_KUBECONFIG"))
}

pub async fn client() -> Client {
    barge_e2e::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).expect("readable kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("valid kubeconfig");
    Client::try_from(cfg).expect("client")
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("kubectl runs (the testbed puts it on PATH)")
}

pub fn s3_client() -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        None,
        None,
        "e2e",
    );
    let cfg = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(env("AWS_ENDPOINT_URL"))
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(cfg)
}

fn short_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}", (nanos ^ u128::from(std::process::id()) << 32) & 0xff_ffff)
}

/// One user story's world: a namespace, a bucket, a credentials Secret, and an operator.
pub struct Story {
    pub name: String,
    pub ns: String,
    pub bucket: String,
    pub client: Client,
    pub s3: aws_sdk_s3::Client,
    pub logs: tempfile::TempDir,
    pub operators: Vec<Operator>,
}

impl Story {
    pub async fn new(name: &str) -> Story {
        let id = short_id();
        let ns = format!("e2e-{name}-{id}");
        let client = client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // Jobs run where the restricted Pod Security Standard is enforced, as a careful cluster
        // admin sets it up: the API server must admit every pod the operator makes.
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "restricted".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &obj).await.expect("create namespace");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = Secret {
            metadata: ObjectMeta { name: Some(S3_SECRET.into()), ..Default::default() },
            string_data: Some(BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".to_string(), env("AWS_ACCESS_KEY_ID")),
                ("AWS_SECRET_ACCESS_KEY".to_string(), env("AWS_SECRET_ACCESS_KEY")),
            ])),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.expect("create secret");
        let s3 = s3_client();
        let bucket = format!("e2e-{name}-{id}").replace('_', "-");
        s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
        ensure_model(&s3).await;
        Story {
            name: name.into(),
            ns,
            bucket,
            client,
            s3,
            logs: tempfile::Builder::new().prefix("barge-e2e-").tempdir().expect("tempdir"),
            operators: Vec::new(),
        }
    }

    pub fn jobs(&self) -> Api<BatchJob> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Starts an operator that watches this story's namespace. `config` is its YAML config.
    pub fn start_operator(&mut self, config: &str, extra: &[&str]) -> usize {
        self.start_operator_with_kubeconfig(config, extra, &kubeconfig())
    }

    pub fn start_operator_with_kubeconfig(
        &mut self,
        config: &str,
        extra: &[&str],
        kubeconfig: &Path,
    ) -> usize {
        let n = self.operators.len();
        let cfg_path = self.logs.path().join(format!("operator-{n}.yaml"));
        let full = format!(
            "runnerImage: {}\nprogress:\n  pollIntervalSeconds: 1\n  timeoutMilliseconds: 500\n{config}",
            runner_image()
        );
        std::fs::write(&cfg_path, full).expect("write config");
        let log_path = self.logs.path().join(format!("operator-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(bin_dir().join("barge-operator"))
            .arg("--config")
            .arg(&cfg_path)
            .args(["--namespace", &self.ns, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,barge_operator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start barge-operator");
        self.operators.push(Operator { child: Some(child), log: log_path });
        n
    }

    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .expect("put object");
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let res = self.s3.get_object().bucket(&self.bucket).key(key).send().await.ok()?;
        Some(res.body.collect().await.expect("read object").into_bytes().to_vec())
    }

    pub async fn get_jsonl(&self, key: &str) -> Vec<serde_json::Value> {
        let body = self.get(key).await.unwrap_or_else(|| panic!("s3://{}/{key} exists", self.bucket));
        String::from_utf8(body)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// A BatchJob spec over `s3://<bucket>/<input>`, writing to `s3://<bucket>/<output>/`.
    pub fn spec(&self, input: &str, output: &str) -> BatchJobSpec {
        serde_json::from_value(json!({
            "model": {"uri": format!("s3://{MODEL_BUCKET}/minilm/"), "name": "all-minilm-l6-v2"},
            "input": {"uri": format!("s3://{}/{input}", self.bucket)},
            "output": {"uri": format!("s3://{}/{output}/", self.bucket)},
            "storage": {"endpoint": pod_s3_endpoint(), "region": "us-east-1", "credentialsSecret": S3_SECRET},
        }))
        .expect("valid spec")
    }

    pub async fn create(&self, name: &str, spec: BatchJobSpec) -> BatchJob {
        let job = BatchJob::new(name, spec);
        self.jobs().create(&PostParams::default(), &job).await.expect("create BatchJob")
    }

    /// Polls the job until `check` holds; on timeout, dumps the cluster's view and panics.
    pub async fn wait_job(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&BatchJob) -> bool,
    ) -> BatchJob {
        let start = Instant::now();
        loop {
            if let Ok(job) = self.jobs().get(name).await
                && check(&job)
            {
                return job;
            }
            if start.elapsed() > limit {
                self.dump().await;
                panic!("timed out after {limit:?} waiting for {name}: {what}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: &str, limit: Duration) -> BatchJob {
        self.wait_job(name, &format!("phase {phase}"), limit, |j| {
            j.status.as_ref().is_some_and(|s| s.phase.as_str() == phase)
        })
        .await
    }

    pub async fn wait(&self, what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
        let start = Instant::now();
        while !check().await {
            if start.elapsed() > limit {
                self.dump().await;
                panic!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Prints jobs, pods, events and operator logs: what a failing test needs to be understood.
    pub async fn dump(&self) {
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "===== story {} (namespace {}) =====", self.name, self.ns);
        if let Ok(jobs) = self.jobs().list(&ListParams::default()).await {
            for j in jobs {
                let _ = writeln!(
                    out,
                    "--- BatchJob {}: {}",
                    j.metadata.name.clone().unwrap_or_default(),
                    serde_json::to_string_pretty(&j.status).unwrap_or_default()
                );
            }
        }
        if let Ok(pods) = self.pods().list(&ListParams::default()).await {
            for p in pods {
                let _ = writeln!(
                    out,
                    "--- Pod {}: {}",
                    p.metadata.name.clone().unwrap_or_default(),
                    serde_json::to_string(&p.status).unwrap_or_default()
                );
            }
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        if let Ok(evs) = events.list(&ListParams::default()).await {
            for e in evs {
                let _ = writeln!(
                    out,
                    "--- Event {} {}: {}",
                    e.reason.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
        for op in &self.operators {
            let log = std::fs::read_to_string(&op.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let _ = writeln!(out, "--- operator log {} (last 60 lines):", op.log.display());
            for l in tail.iter().rev() {
                let _ = writeln!(out, "{l}");
            }
        }
        if let Ok(pods) = self.pods().list(&ListParams::default()).await {
            for p in pods {
                let name = p.metadata.name.unwrap_or_default();
                let logs = kubectl(&["logs", "-n", &self.ns, &name, "--tail=40"]);
                let _ = writeln!(out, "--- logs of pod {name} (last 40 lines):");
                let _ = out.write_all(&logs.stdout);
                let _ = out.write_all(&logs.stderr);
            }
        }
    }
}

impl Drop for Story {
    fn drop(&mut self) {
        for op in &mut self.operators {
            op.kill();
        }
        if std::thread::panicking() || std::env::var_os("BARGE_E2E_KEEP").is_some() {
            if let Ok(spare) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self.logs, spare).keep();
                eprintln!("kept namespace {} and operator logs in {}", self.ns, kept.display());
            }
            return;
        }
        // Best effort, without a runtime: kubectl deletes the namespace (its pods go with it).
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .env("KUBECONFIG", kubeconfig())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Operator {
    /// SIGKILL: the crash a restart must survive.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Uploads the real MiniLM model once per cluster.
async fn ensure_model(s3: &aws_sdk_s3::Client) {
    let dir = PathBuf::from(env("BARGE_MINILM_DIR"));
    let marker = "minilm/.complete";
    if s3.head_object().bucket(MODEL_BUCKET).key(marker).send().await.is_ok() {
        return;
    }
    let _ = s3.create_bucket().bucket(MODEL_BUCKET).send().await;
    for entry in walk(&dir) {
        let rel = entry.strip_prefix(&dir).expect("inside").to_string_lossy().to_string();
        let body = ByteStream::from_path(&entry).await.expect("read model file");
        s3.put_object()
            .bucket(MODEL_BUCKET)
            .key(format!("minilm/{rel}"))
            .body(body)
            .send()
            .await
            .expect("upload");
    }
    s3.put_object()
        .bucket(MODEL_BUCKET)
        .key(marker)
        .body(ByteStream::from_static(b"ok"))
        .send()
        .await
        .expect("marker");
}

/// The SmolLM2 GGUF in the models bucket, uploaded once; returns its URI.
pub async fn ensure_gguf(s3: &aws_sdk_s3::Client) -> String {
    let path = PathBuf::from(env("BARGE_SMOLLM2_GGUF"));
    let name = path.file_name().expect("a file name").to_string_lossy().to_string();
    let key = format!("smollm2/{name}");
    if s3.head_object().bucket(MODEL_BUCKET).key(&key).send().await.is_err() {
        let _ = s3.create_bucket().bucket(MODEL_BUCKET).send().await;
        let body = ByteStream::from_path(&path).await.expect("read the GGUF");
        s3.put_object().bucket(MODEL_BUCKET).key(&key).body(body).send().await.expect("upload the GGUF");
    }
    format!("s3://{MODEL_BUCKET}/{key}")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("model dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Requests in the OpenAI batch format, varied in length.
pub fn requests(n: usize, prefix: &str) -> String {
    const WORDS: [&str; 12] = [
        "river", "batch", "quiet", "model", "harbour", "token", "lantern", "green", "cluster", "paper",
        "orbit", "signal",
    ];
    (0..n)
        .map(|i| {
            let len = 3 + (i * 17) % 40;
            let text: Vec<&str> = (0..len).map(|k| WORDS[(i * 5 + k * 3) % WORDS.len()]).collect();
            json!({"custom_id": format!("{prefix}-{i}"), "method": "POST", "url": "/v1/embeddings",
                   "body": {"input": text.join(" ")}})
            .to_string()
                + "\n"
        })
        .collect()
}

pub fn condition_status(job: &BatchJob, type_: &str) -> Option<(String, String, String)> {
    let c = job.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn delete_job(story: &Story, name: &str) {
    let _ = story.jobs().delete(name, &DeleteParams::background()).await;
}
