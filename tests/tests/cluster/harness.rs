//! The test cluster as the scenarios use it: a namespace per story with the operator installed
//! there by the Helm chart, pods in containers from the project's images, MinIO buckets, and
//! waits with timeouts that dump what the cluster saw when they run out.
//!
//! Needs `tests/testbed/up` to have run with the kubelet node (the README's test command does
//! that) and `BARGE_E2E_KUBECONFIG` to point at its kubeconfig. `BARGE_E2E_KEEP=1` keeps the
//! namespaces and their operator releases after a run, for debugging.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Jobs and the operator run where the restricted Pod Security Standard is enforced, as a careful
/// cluster admin sets it up: the API server must admit every pod of theirs.
async fn create_restricted_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let obj = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "pod-security.kubernetes.io/enforce".to_string(),
                "restricted".to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &obj).await.expect("create namespace");
}

/// The Helm release of a story's operator: one per story.
pub const RELEASE: &str = "barge";

/// One user story's world: a namespace, a bucket, a credentials Secret, and the operator the
/// chart installs there.
pub struct Story {
    pub name: String,
    pub ns: String,
    /// Where the story's operator is installed, apart from its jobs as on a real cluster.
    pub operator_ns: String,
    pub bucket: String,
    pub client: Client,
    pub s3: aws_sdk_s3::Client,
    /// Scratch files of the story (specs, downloads).
    pub scratch: tempfile::TempDir,
    installed: bool,
}

impl Story {
    pub async fn new(name: &str) -> Story {
        let id = short_id();
        let ns = format!("e2e-{name}-{id}");
        let client = client().await;
        create_restricted_namespace(&client, &ns).await;
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
            operator_ns: format!("{ns}-op"),
            ns,
            bucket,
            client,
            s3,
            scratch: tempfile::Builder::new().prefix("barge-e2e-").tempdir().expect("tempdir"),
            installed: false,
        }
    }

    pub fn jobs(&self) -> Api<BatchJob> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Installs the operator with the chart, as a user does: `helm install --wait` returns once
    /// the Deployment is Available, its pod running from the project's image on its
    /// ServiceAccount token. It lives in `operator_ns` and watches only the story's namespace
    /// (`watchNamespace`), so the stories stay out of each other's way. `values` are the story's
    /// own values, as `--set-json` pairs (`pricing.cpuPerHour=3.6`: a plain `--set` would make that a
    /// string, which the chart's schema refuses).
    pub async fn install_operator(&mut self, values: &[&str]) {
        create_restricted_namespace(&self.client, &self.operator_ns).await;
        let chart = format!("{}/../charts/barge", env!("CARGO_MANIFEST_DIR"));
        let (repo, tag) = split_image(&env("BARGE_E2E_OPERATOR_IMAGE"));
        let (runner_repo, runner_tag) = split_image(&runner_image());
        let set = vec![
            "crds.enabled=false".to_string(),
            // The cluster's one set of user roles is not the stories' to own.
            "rbac.userRoles.enabled=false".to_string(),
            format!("image.repository={repo}"),
            format!("image.tag={tag}"),
            format!("runner.image.repository={runner_repo}"),
            format!("runner.image.tag={runner_tag}"),
            format!("watchNamespace={}", self.ns),
            "progress.pollIntervalSeconds=1".to_string(),
            "progress.timeoutMilliseconds=500".to_string(),
            // The stories of a missing Secret and an unpullable image wait this out.
            "startGraceSeconds=15".to_string(),
            r"logLevel=info\,barge_operator=debug".to_string(),
        ];
        let mut helm = Command::new("helm");
        helm.args(["install", RELEASE, &chart, "-n", &self.operator_ns, "--wait", "--timeout", "180s"]);
        for v in &set {
            helm.args(["--set", v]);
        }
        for v in values {
            helm.args(["--set-json", v]);
        }
        let out = helm.env("KUBECONFIG", kubeconfig()).output().expect("helm runs");
        self.installed = true;
        if !out.status.success() {
            self.dump().await;
            panic!("helm install: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// The operator's pods, as the chart's Deployment made them.
    pub async fn operator_pods(&self) -> Vec<Pod> {
        let selector = format!("app.kubernetes.io/name=barge-operator,app.kubernetes.io/instance={RELEASE}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        pods.list(&ListParams::default().labels(&selector)).await.expect("list operator pods").items
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
        for ns in [&self.ns, &self.operator_ns] {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            for p in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
                pod_logs(&mut out, ns, &p);
            }
        }
    }
}

/// The pod's log as `kubectl logs` reads it through the kubelet, and the log of the container
/// before its last restart.
fn pod_logs(out: &mut impl Write, ns: &str, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let restarted = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.restart_count > 0));
    let mut shown = vec![("", None)];
    if restarted {
        shown.insert(0, ("before its restart, ", Some("--previous")));
    }
    for (which, flag) in shown {
        let mut args = vec!["logs", "-n", ns, &name, "--tail=60"];
        args.extend(flag);
        let logs = kubectl(&args);
        let _ = writeln!(out, "--- logs of pod {ns}/{name} ({which}last 60 lines):");
        let _ = out.write_all(&logs.stdout);
        let _ = out.write_all(&logs.stderr);
    }
}

impl Drop for Story {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("BARGE_E2E_KEEP").is_some() {
            eprintln!("kept namespaces {} and {} (operator release {RELEASE})", self.ns, self.operator_ns);
            return;
        }
        // Best effort, without a runtime. The release goes first: its ClusterRole and binding are
        // cluster-scoped and would outlive the namespace.
        let quiet = |cmd: &mut Command| {
            let _ = cmd.env("KUBECONFIG", kubeconfig()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if self.installed {
            quiet(Command::new("helm").args(["uninstall", RELEASE, "-n", &self.operator_ns, "--wait=false"]));
            quiet(Command::new("kubectl").args(["delete", "namespace", &self.operator_ns, "--wait=false"]));
        }
        quiet(Command::new("kubectl").args(["delete", "namespace", &self.ns, "--wait=false"]));
    }
}

/// SIGKILL to a pod's first container through the node's containerd, as the kernel's OOM killer
/// or a crashing process would end it: the kubelet sees the container die, not a deletion.
pub fn kill_container(pod: &Pod) {
    if let Err(e) = try_kill_container(pod) {
        panic!("{e}");
    }
}

/// [`kill_container`], for a caller that picks another pod when this one just ended.
pub fn try_kill_container(pod: &Pod) -> Result<(), String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .ok_or("the kubelet reports no container id")?;
    let id = id.strip_prefix("containerd://").ok_or("not a containerd container id")?;
    let killed = Command::new("ctr")
        .args(["--address", &env("BARGE_TESTBED_CONTAINERD"), "--namespace", "k8s.io"])
        .args(["tasks", "kill", "--signal", "SIGKILL", id])
        .output()
        .expect("ctr runs");
    if killed.status.success() {
        Ok(())
    } else {
        Err(format!("ctr tasks kill: {}", String::from_utf8_lossy(&killed.stderr)))
    }
}

/// `repo/name:tag` into the chart's repository and tag values.
pub fn split_image(image: &str) -> (String, String) {
    let (repo, tag) = image.rsplit_once(':').expect("an image with a tag");
    (repo.to_string(), tag.to_string())
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
