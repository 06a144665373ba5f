//! The CUDA build of the runner on a machine without a GPU: it starts, `--device auto` runs on
//! the CPU exactly as the CPU build does, and `--device cuda` fails at once with the reason.
//!
//! These tests need the CUDA binary, which takes long to build, so they run only when
//! `BARGE_CUDA_RUNNER` names it (CI sets it to what `scripts/build-cuda.sh` prints) and pass
//! with a note otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

/// The CUDA build, or `None` (with a note) when `BARGE_CUDA_RUNNER` is unset.
fn cuda_runner(test: &str) -> Option<PathBuf> {
    match std::env::var_os("BARGE_CUDA_RUNNER") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "{test}: skipped, BARGE_CUDA_RUNNER does not name the CUDA build (scripts/build-cuda.sh)"
            );
            None
        }
    }
}

/// Whether this machine has an NVIDIA driver loaded (then `--device cuda` may well succeed).
fn has_nvidia_driver() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

fn run_binary(binary: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let (model, input, output) =
        (minilm().display().to_string(), input.display().to_string(), output.display().to_string());
    Command::new(binary)
        .args(["run", "--model", &model, "--input", &input, "--output", &output, "--threads", "2"])
        .args(extra)
        .env("BARGE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("BARGE_DEVICE")
        .output()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()))
}

/// The CUDA build and `requests` embedding requests in a fresh folder, on a machine without an
/// NVIDIA driver; `None` (with a note) when the build is not named or a driver is there.
struct Case {
    cuda: PathBuf,
    dir: tempfile::TempDir,
    input: PathBuf,
}

fn gpu_less_case(test: &str, requests: usize) -> Option<Case> {
    let cuda = cuda_runner(test)?;
    if has_nvidia_driver() {
        eprintln!("{test}: skipped, this machine has an NVIDIA driver (`auto` would take its GPU)");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, requests);
    Some(Case { cuda, dir, input })
}

#[test]
fn the_cuda_build_without_a_gpu_embeds_like_the_cpu_build() {
    let Some(Case { cuda, dir, input }) =
        gpu_less_case("the_cuda_build_without_a_gpu_embeds_like_the_cpu_build", 40)
    else {
        return;
    };
    let cpu_out = dir.path().join("cpu");
    let cpu = run_binary(Path::new(env!("CARGO_BIN_EXE_barge-runner")), &input, &cpu_out, &[]);
    assert!(cpu.status.success(), "the CPU build failed: {}", String::from_utf8_lossy(&cpu.stderr));
    let cuda_out = dir.path().join("cuda");
    let run = run_binary(&cuda, &input, &cuda_out, &["--device", "auto"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the CUDA build failed: {log}");
    assert!(log.contains("no CUDA GPU; running on the CPU"), "auto says why it chose the CPU: {log}");

    let (want, got) =
        (read_jsonl(&cpu_out.join("results.jsonl")), read_jsonl(&cuda_out.join("results.jsonl")));
    assert_eq!(custom_ids(&got), custom_ids(&want));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g["response"]["body"]["usage"], w["response"]["body"]["usage"]);
        let (w, g) = (embedding(w, 0), embedding(g, 0));
        // The same CPU code on the same threads; only OpenBLAS could differ (if one build lacks it).
        let drift = w.iter().zip(&g).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(drift <= 1e-5, "the CUDA build's vector differs from the CPU build's by {drift}");
    }
}

#[test]
fn the_cuda_build_asked_for_a_missing_gpu_fails_at_once_and_says_why() {
    let Some(Case { cuda, dir, input }) =
        gpu_less_case("the_cuda_build_asked_for_a_missing_gpu_fails_at_once_and_says_why", 4)
    else {
        return;
    };
    let out = dir.path().join("out");
    let started = Instant::now();
    let run = run_binary(&cuda, &input, &out, &["--device", "cuda"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "a plain failure, not a crash: {stderr}");
    assert!(
        stderr.contains("barge-runner: error: --device cuda:0: no usable NVIDIA driver"),
        "the error names the device and the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    // Before any work: no model load, nothing written.
    assert!(!stderr.contains("model loaded"), "{stderr}");
    assert!(!out.join("results.jsonl").exists() && !out.join("_barge").exists(), "nothing written");
    assert!(elapsed < Duration::from_secs(10), "fails at once, took {elapsed:?}");
}
