//! A killed or stopped run loses nothing and repeats nothing when started again.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const REQUESTS: usize = 1200;

struct Job {
    _dir: tempfile::TempDir,
    input: String,
    output: std::path::PathBuf,
}

impl Job {
    fn new() -> Job {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        write_requests(&input, REQUESTS);
        let output = dir.path().join("out");
        Job { input: input.display().to_string(), output, _dir: dir }
    }

    fn args(&self) -> Vec<String> {
        ["run", "--model", &minilm().display().to_string(), "--input", &self.input]
            .into_iter()
            .map(str::to_string)
            .chain(["--output".into(), self.output.display().to_string(), "--window".into(), "40".into()])
            .collect()
    }

    fn assert_every_request_exactly_once(&self) {
        let results = read_jsonl(&self.output.join("results.jsonl"));
        let expected: Vec<String> = (0..REQUESTS).map(|i| format!("req-{i}")).collect();
        assert_eq!(custom_ids(&results), expected);
        assert!(read_jsonl(&self.output.join("errors.jsonl")).is_empty());
    }
}

#[test]
fn killed_run_resumes_without_loss_or_duplicates() {
    let job = Job::new();
    let mut child = runner().args(job.args()).stderr(Stdio::null()).spawn().expect("starts");
    wait_for("three checkpoints", Duration::from_secs(300), || checkpointed_chunks(&job.output) >= 3);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let at_kill = checkpointed_chunks(&job.output);
    assert!(!job.output.join("results.jsonl").exists(), "killed before the end");

    let out = run_ok(&job.args().iter().map(String::as_str).collect::<Vec<_>>());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("resuming after the last checkpoint"), "{log}");
    job.assert_every_request_exactly_once();
    assert!(at_kill >= 3);
}

#[test]
fn sigterm_checkpoints_exits_143_and_a_rerun_finishes() {
    let job = Job::new();
    let term = job.output.with_extension("termination");
    let mut child = runner()
        .args(job.args())
        .args(["--termination-message-path", &term.display().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for("a first checkpoint", Duration::from_secs(300), || checkpointed_chunks(&job.output) >= 1);
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let mut status = None;
    wait_for("the runner to exit after SIGTERM", Duration::from_secs(60), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(143));
    let message: Value =
        serde_json::from_slice(&std::fs::read(&term).expect("termination message")).expect("json");
    assert_eq!(message["outcome"], "interrupted");
    assert!(message["completed"].as_u64().expect("count") > 0);
    assert!(!job.output.join("results.jsonl").exists());

    run_ok(&job.args().iter().map(String::as_str).collect::<Vec<_>>());
    job.assert_every_request_exactly_once();
}

#[test]
fn a_finished_job_is_not_run_again_and_other_arguments_need_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 5);
    let out = dir.path().join("out");
    let (model, input_s, out_s) =
        (minilm().display().to_string(), input.display().to_string(), out.display().to_string());
    let args = ["run", "--model", &model, "--input", &input_s, "--output", &out_s];
    run_ok(&args);
    let before = std::fs::metadata(out.join("results.jsonl")).expect("results").modified().expect("mtime");

    let again = run_ok(&args);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
    let after = std::fs::metadata(out.join("results.jsonl")).expect("results").modified().expect("mtime");
    assert_eq!(before, after, "a finished job's output is left alone");

    write_requests(&input, 6); // a different input now
    let refused = runner().args(args).output().expect("runs");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("holds a different job") && err.contains("--overwrite"), "{err}");

    run_ok(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(read_jsonl(&out.join("results.jsonl")).len(), 6);
}

#[test]
fn fatal_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 2);
    let (i, o) = (input.display().to_string(), dir.path().join("out").display().to_string());
    let model = minilm().display().to_string();
    let cases = [
        (vec!["--model", "/nonexistent/model", "--input", &i, "--output", &o], "no such folder"),
        (vec!["--model", &model, "--input", "/nonexistent/in.jsonl", "--output", &o], "does not exist"),
    ];
    for (args, needle) in cases {
        let out = runner().arg("run").args(&args).output().expect("runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("barge-runner: error:") && last.contains(needle), "{stderr}");
    }
}
