//! Test fixtures: the real model, the runner binary, request files, and a MinIO server.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the runner lives in the workspace").to_path_buf()
}

/// Runs one of the repository's scripts that prints a path on stdout.
fn script_path(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_root().join("scripts").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} {args:?} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The real all-MiniLM-L6-v2 folder (`BARGE_MINILM_DIR`, else fetched into the cache).
pub fn minilm() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("BARGE_MINILM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => script_path("fetch-model.sh", &["minilm"]),
    })
}

/// The SmolLM2 GGUF (`BARGE_SMOLLM2_GGUF`, else fetched into the cache).
pub fn smollm2() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os("BARGE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => script_path("fetch-model.sh", &["smollm2"]),
    })
}

/// The Gemma 3 GGUF (`BARGE_GEMMA3_GGUF`, else fetched into the cache).
pub fn gemma3() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os("BARGE_GEMMA3_GGUF") {
        Some(p) => PathBuf::from(p),
        None => script_path("fetch-model.sh", &["gemma3"]),
    })
}

pub fn runner() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_barge-runner"));
    cmd.env("BARGE_LOG_FORMAT", "json").env("RUST_LOG", "info").env_remove("AWS_ENDPOINT_URL");
    cmd
}

/// Runs the runner to its end and insists it succeeded, showing its stderr otherwise.
pub fn run_ok(args: &[&str]) -> Output {
    let out = runner().args(args).output().expect("the runner starts");
    assert!(out.status.success(), "runner {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `barge-runner run` of `input` into `output` on the real MiniLM, with `extra` flags; must succeed.
pub fn run_local(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let (model, input, output) =
        (minilm().display().to_string(), input.display().to_string(), output.display().to_string());
    run_ok(&[&["run", "--model", &model, "--input", &input, "--output", &output][..], extra].concat())
}

pub fn embed_line(id: &str, text: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": {"model": "minilm", "input": text}})
        .to_string()
}

/// Sentences of varied length (4 to ~90 words), deterministic.
pub fn sentence(i: usize) -> String {
    const WORDS: [&str; 16] = [
        "river", "batch", "quiet", "model", "harbour", "token", "lantern", "green", "cluster", "paper",
        "orbit", "signal", "meadow", "copper", "window", "garden",
    ];
    let len = 4 + (i * 37) % 87;
    (0..len).map(|k| WORDS[(i * 7 + k * 3 + k / 5) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

pub fn write_requests(path: &Path, n: usize) {
    let body: String = (0..n).map(|i| embed_line(&format!("req-{i}"), &sentence(i)) + "\n").collect();
    std::fs::write(path, body).expect("write requests");
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("each output line is JSON")).collect()
}

pub fn custom_ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["custom_id"].as_str().expect("custom_id").to_string()).collect()
}

pub fn embedding(record: &Value, index: usize) -> Vec<f32> {
    record["response"]["body"]["data"][index]["embedding"]
        .as_array()
        .expect("a float embedding")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Waits until `check` holds, failing the test with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Chunks the shard's checkpoint counts, or 0 before the first one.
pub fn checkpointed_chunks(output: &Path) -> u64 {
    let path = output.join("_barge/shard-00000-of-00001/checkpoint.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["chunks"].as_u64())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub const MINIO_USER: &str = "barge-test";
pub const MINIO_SECRET: &str = "barge-test-secret-9f8e7d";

/// A real MinIO server on loopback, built from its Go module by `scripts/build-minio.sh`.
pub struct Minio {
    child: Option<Child>,
    pub port: u16,
    data: tempfile::TempDir,
}

impl Minio {
    pub fn start() -> Minio {
        let data = tempfile::tempdir().expect("tempdir");
        let mut m = Minio { child: None, port: free_port(), data };
        m.launch();
        m
    }

    fn binary() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(|| match std::env::var_os("BARGE_MINIO") {
            Some(p) => PathBuf::from(p),
            None => script_path("build-minio.sh", &[]),
        })
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.data.path().join("minio.log")).expect("log file");
        let child = Command::new(Self::binary())
            .args(["server", "--quiet", "--address", &format!("127.0.0.1:{}", self.port)])
            .arg(self.data.path().join("data"))
            .env("MINIO_ROOT_USER", MINIO_USER)
            .env("MINIO_ROOT_PASSWORD", MINIO_SECRET)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("minio starts");
        self.child = Some(child);
        let port = self.port;
        let log_path = self.data.path().join("minio.log");
        let start = Instant::now();
        while !healthy(port) {
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "MinIO did not become healthy; log:\n{}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server abruptly, as a crash or network cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A runner command with this server's endpoint and credentials.
    pub fn runner(&self) -> Command {
        let mut cmd = runner();
        cmd.env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", MINIO_USER)
            .env("AWS_SECRET_ACCESS_KEY", MINIO_SECRET)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
        cmd
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(MINIO_USER, MINIO_SECRET, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        self.kill();
    }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /minio/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// A current-thread runtime for the tests' own S3 calls.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}
