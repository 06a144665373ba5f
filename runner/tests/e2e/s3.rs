//! The runner against a real S3 server (MinIO on loopback): inputs, models and outputs in
//! buckets, live progress, outages and refused credentials.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;

use crate::common::*;

fn create_bucket(m: &Minio, bucket: &str) {
    block_on(m.client().create_bucket().bucket(bucket).send()).expect("create bucket");
}

fn put(m: &Minio, bucket: &str, key: &str, body: Vec<u8>) {
    block_on(m.client().put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send())
        .expect("put");
}

fn get(m: &Minio, bucket: &str, key: &str) -> Option<Vec<u8>> {
    block_on(async {
        let out = m.client().get_object().bucket(bucket).key(key).send().await.ok()?;
        Some(out.body.collect().await.ok()?.to_vec())
    })
}

fn jsonl(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn upload_model(m: &Minio, bucket: &str, prefix: &str) {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        for entry in std::fs::read_dir(dir).expect("model folder") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if entry.path().is_dir() {
                walk(&entry.path(), &key, out);
            } else {
                out.push((key, entry.path()));
            }
        }
    }
    let mut files = Vec::new();
    walk(minilm(), "", &mut files);
    for (key, path) in files {
        put(m, bucket, &format!("{prefix}{key}"), std::fs::read(path).expect("model file"));
    }
}

fn checkpoint_chunks(m: &Minio, bucket: &str, prefix: &str) -> u64 {
    get(m, bucket, &format!("{prefix}_barge/shard-00000-of-00001/checkpoint.json"))
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["chunks"].as_u64())
        .unwrap_or(0)
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn s3_input_model_and_output_match_a_local_run_with_live_progress() {
    let m = Minio::start();
    create_bucket(&m, "models");
    create_bucket(&m, "data");
    upload_model(&m, "models", "minilm/");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in.jsonl");
    write_requests(&local_input, 600);
    put(&m, "data", "in/requests.jsonl", std::fs::read(&local_input).expect("input"));
    let cache = dir.path().join("cache").display().to_string();
    let port = free_port();

    let child = m
        .runner()
        .args(["run", "--model", "s3://models/minilm/", "--input", "s3://data/in/requests.jsonl"])
        .args(["--output", "s3://data/out/", "--cache-dir", &cache, "--window", "40"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut progress = None;
    wait_for("GET /progress to answer", Duration::from_secs(300), || {
        progress = http_get(port, "/progress");
        progress.is_some()
    });
    let progress: Value = serde_json::from_str(&progress.expect("progress")).expect("progress JSON");
    assert_eq!(progress["shard"], serde_json::json!({"index": 0, "count": 1}));
    assert!(progress["completed"].is_u64() && progress["started"].is_string());
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(metrics.is_empty() || metrics.contains("barge_runner_batch_seconds"), "{metrics}");
    let out = child.wait_with_output().expect("finishes");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let local_out = dir.path().join("local");
    run_local(&local_input, &local_out, &[]);
    let remote = jsonl(&get(&m, "data", "out/results.jsonl").expect("results in S3"));
    let local = read_jsonl(&local_out.join("results.jsonl"));
    assert_eq!(custom_ids(&remote), custom_ids(&local));
    for (a, b) in remote.iter().zip(&local) {
        let drift =
            embedding(a, 0).iter().zip(embedding(b, 0)).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(drift < 1e-5);
    }
    let manifest: Value =
        serde_json::from_slice(&get(&m, "data", "out/manifest.json").expect("manifest")).expect("json");
    assert_eq!(manifest["requestCounts"]["completed"], 600);
    assert_eq!(manifest["input"]["uri"], "s3://data/in/requests.jsonl");
    assert!(get(&m, "data", "out/errors.jsonl").is_some());

    // The model is fetched once: a second job finds it in the cache.
    let again = m
        .runner()
        .args(["run", "--model", "s3://models/minilm/", "--input", "s3://data/in/requests.jsonl"])
        .args(["--output", "s3://data/out2/", "--cache-dir", &cache])
        .output()
        .expect("runs");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("model found in the cache"));
}

#[test]
fn an_s3_outage_fails_clearly_and_a_rerun_resumes_without_loss() {
    let mut m = Minio::start();
    create_bucket(&m, "data");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in.jsonl");
    write_requests(&local_input, 1200);
    put(&m, "data", "in.jsonl", std::fs::read(&local_input).expect("input"));
    let model = minilm().display().to_string();
    let args = [
        "run",
        "--model",
        &model,
        "--input",
        "s3://data/in.jsonl",
        "--output",
        "s3://data/out/",
        "--window",
        "40",
    ];

    let child = m.runner().args(args).stderr(Stdio::piped()).spawn().expect("starts");
    wait_for("two checkpoints in S3", Duration::from_secs(300), || {
        checkpoint_chunks(&m, "data", "out/") >= 2
    });
    m.kill();
    let out = child.wait_with_output().expect("exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("barge-runner: error:") && last.contains("S3"), "{last}");
    assert!(!stderr.contains(MINIO_SECRET), "the secret leaked into the output");

    m.restart();
    let out = m.runner().args(args).output().expect("reruns");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = jsonl(&get(&m, "data", "out/results.jsonl").expect("results"));
    let expected: Vec<String> = (0..1200).map(|i| format!("req-{i}")).collect();
    assert_eq!(custom_ids(&results), expected);
}

#[test]
fn refused_credentials_and_missing_buckets_are_named_without_leaking_secrets() {
    let m = Minio::start();
    create_bucket(&m, "data");
    put(&m, "data", "in.jsonl", (embed_line("a", "hello") + "\n").into_bytes());
    let model = minilm().display().to_string();
    let wrong_secret = "definitely-wrong-secret-4242";

    let out = m
        .runner()
        .env("AWS_SECRET_ACCESS_KEY", wrong_secret)
        .args(["run", "--model", &model, "--input", "s3://data/in.jsonl", "--output", "s3://data/out/"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("refused") && stderr.contains("s3://data/in.jsonl"), "{stderr}");
    assert!(!stderr.contains(wrong_secret));

    let out = m
        .runner()
        .args([
            "run",
            "--model",
            &model,
            "--input",
            "s3://data/in.jsonl",
            "--output",
            "s3://no-such-bucket/out/",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no-such-bucket") && stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn outputs_larger_than_a_part_go_up_in_parts_and_read_back_whole() {
    let m = Minio::start();
    create_bucket(&m, "data");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 8000);
    put(&m, "data", "in.jsonl", std::fs::read(&input).expect("input"));
    // No model work: this is about storage. 8,000 zero vectors are ~14 MB of results, more
    // than one 8 MiB multipart part.
    let out = m
        .runner()
        .args(["run", "--model", &minilm().display().to_string(), "--input", "s3://data/in.jsonl"])
        .args(["--output", "s3://data/big/", "--null-model"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let etag = block_on(m.client().head_object().bucket("data").key("big/results.jsonl").send())
        .expect("results exist")
        .e_tag()
        .unwrap_or_default()
        .to_string();
    assert!(etag.contains('-'), "a multipart upload's ETag ends in -<parts>, got {etag}");
    let results = jsonl(&get(&m, "data", "big/results.jsonl").expect("results"));
    assert!(get(&m, "data", "big/results.jsonl").expect("results").len() > 8 * 1024 * 1024);
    let expected: Vec<String> = (0..8000).map(|i| format!("req-{i}")).collect();
    assert_eq!(custom_ids(&results), expected);
}

/// A shard whose last window was checkpointed but not yet marked done resumes at the end of
/// the input: S3 answers that range with 416, which means nothing is left, not an error.
/// And two jobs on one S3 output: the second is refused by the claim, S3's conditional write.
#[test]
fn a_resume_at_the_end_of_the_input_finishes_and_a_second_job_is_refused_by_the_claim() {
    let m = Minio::start();
    create_bucket(&m, "models");
    create_bucket(&m, "data");
    upload_model(&m, "models", "minilm/");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in.jsonl");
    write_requests(&local_input, 100);
    put(&m, "data", "in.jsonl", std::fs::read(&local_input).expect("input"));
    put(&m, "data", "other.jsonl", embed_line("x", "another job").into_bytes());
    let cache = dir.path().join("cache").display().to_string();
    let run = |input: &str| {
        m.runner()
            .args(["run", "--model", "s3://models/minilm/", "--input", input, "--output", "s3://data/out/"])
            .args(["--cache-dir", &cache])
            .output()
            .expect("runs")
    };
    let first = run("s3://data/in.jsonl");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));

    let key = "out/_barge/shard-00000-of-00001/checkpoint.json";
    let mut cp: Value = serde_json::from_slice(&get(&m, "data", key).expect("checkpoint")).expect("JSON");
    assert_eq!(cp["nextOffset"].as_u64(), Some(std::fs::metadata(&local_input).expect("size").len()));
    cp["done"] = Value::Bool(false);
    put(&m, "data", key, serde_json::to_vec(&cp).expect("JSON"));
    block_on(m.client().delete_object().bucket("data").key("out/manifest.json").send()).expect("delete");
    let again = run("s3://data/in.jsonl");
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("resuming after the last checkpoint"), "{log}");
    assert_eq!(custom_ids(&jsonl(&get(&m, "data", "out/results.jsonl").expect("results"))).len(), 100);

    let other = run("s3://data/other.jsonl");
    assert!(!other.status.success());
    let log = String::from_utf8_lossy(&other.stderr);
    assert!(log.contains("holds a different job"), "{log}");
    assert_eq!(custom_ids(&jsonl(&get(&m, "data", "out/results.jsonl").expect("results"))).len(), 100);
}
