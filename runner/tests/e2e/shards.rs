//! Shards plus finalize give what one unsharded run gives.

use crate::common::*;

fn max_drift(a: &serde_json::Value, b: &serde_json::Value) -> f32 {
    embedding(a, 0).iter().zip(embedding(b, 0)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn sharded_runs_and_finalize_equal_one_unsharded_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let mut body: String = (0..150).map(|i| embed_line(&format!("req-{i}"), &sentence(i)) + "\n").collect();
    body.push_str("not json\n");
    body.push_str(&embed_line("req-7", "a repeated id in the last shard"));
    std::fs::write(&input, body).expect("write");
    let whole = dir.path().join("whole");
    run_local(&input, &whole, &[]);

    let sharded = dir.path().join("sharded");
    let sharded_s = sharded.display().to_string();
    for shard in ["2/3", "0/3", "1/3"] {
        let out = run_local(&input, &sharded, &["--shard", shard]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("finalize"),
            "a shard does not finalize itself"
        );
        assert!(!sharded.join("results.jsonl").exists());
    }
    run_ok(&["finalize", "--output", &sharded_s, "--shards", "3"]);

    let (a, b) = (read_jsonl(&whole.join("results.jsonl")), read_jsonl(&sharded.join("results.jsonl")));
    assert_eq!(custom_ids(&a), custom_ids(&b));
    assert_eq!(a.len(), 150);
    for (x, y) in a.iter().zip(&b) {
        assert!(max_drift(x, y) < 1e-5, "{} differs", x["custom_id"]);
        assert_eq!(x["response"]["body"]["usage"], y["response"]["body"]["usage"]);
    }
    assert_eq!(
        std::fs::read_to_string(whole.join("errors.jsonl")).expect("errors"),
        std::fs::read_to_string(sharded.join("errors.jsonl")).expect("errors"),
    );
    let errors = read_jsonl(&sharded.join("errors.jsonl"));
    assert_eq!(errors.len(), 2);
    assert_eq!(
        (errors[0]["error"]["line"].as_u64(), errors[1]["error"]["line"].as_u64()),
        (Some(151), Some(152))
    );
    assert_eq!(errors[1]["error"]["code"], "duplicate_custom_id");
}

#[test]
fn finalize_refuses_an_incomplete_job_naming_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 12);
    let out_dir = dir.path().join("out");
    for shard in ["0/3", "1/3"] {
        run_local(&input, &out_dir, &["--shard", shard]);
    }
    let out = out_dir.display().to_string();
    let refused = runner().args(["finalize", "--output", &out, "--shards", "3"]).output().expect("runs");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("shard 2/3 is incomplete"), "{err}");
    let wrong = runner().args(["finalize", "--output", &out, "--shards", "2"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("has 3 shards, not 2"));
}

#[test]
fn a_partial_finalize_merges_the_finished_shards_and_counts_what_never_ran() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 11);
    // Line 12 is broken on purpose: its error record must carry its global line number even
    // though the shard before it never ran.
    let mut body = std::fs::read_to_string(&input).expect("read");
    body.push_str("{not json\n");
    std::fs::write(&input, body).expect("write");
    let out_dir = dir.path().join("out");
    // Shards 0 and 2 ran; shard 1 never started (a cancelled job).
    for shard in ["0/3", "2/3"] {
        run_local(&input, &out_dir, &["--shard", shard]);
    }
    let out = out_dir.display().to_string();
    let term = dir.path().join("termination-log");
    let merged = runner()
        .args(["finalize", "--output", &out, "--shards", "3", "--partial", "--termination-message-path"])
        .arg(&term)
        .output()
        .expect("runs");
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    let results = read_jsonl(&out_dir.join("results.jsonl"));
    let errors = read_jsonl(&out_dir.join("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"]["line"], 12);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["partial"], true);
    let unprocessed = manifest["unprocessed"].as_u64().expect("unprocessed");
    assert!(unprocessed > 0, "shard 1 holds some requests");
    assert_eq!(results.len() as u64 + 1 + unprocessed, 12, "every request is merged or counted as never run");
    let tm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&term).expect("message")).expect("json");
    assert_eq!(tm["unprocessed"].as_u64(), Some(unprocessed));
    assert_eq!(tm["completed"].as_u64(), Some(results.len() as u64));
}

/// The requests that never ran are counted in the input the job ran on; a file replaced since
/// would give wrong counts and line numbers, so the partial finalize refuses it, saying why.
#[test]
fn a_partial_finalize_refuses_an_input_replaced_since_the_job_ran() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 12);
    let out_dir = dir.path().join("out");
    run_local(&input, &out_dir, &["--shard", "0/3"]);
    // A longer file under the same name: another size, another version.
    write_requests(&input, 30);
    let out = out_dir.display().to_string();
    let merged =
        runner().args(["finalize", "--output", &out, "--shards", "3", "--partial"]).output().expect("runs");
    assert_eq!(merged.status.code(), Some(1));
    let err = String::from_utf8_lossy(&merged.stderr);
    assert!(err.contains("changed while the job read it"), "{err}");
    assert!(!out_dir.join("manifest.json").exists(), "no manifest claims a merge");
}

/// A job cancelled (or expired) while its model still downloaded, or while its pods could not
/// be scheduled, has no `_barge/job.json` yet: its partial finalize ends normally with nothing
/// merged, so the job ends Cancelled or Expired rather than FinalizeFailed. A full finalize of
/// such an output is still an error.
#[test]
fn a_partial_finalize_of_an_output_no_runner_wrote_succeeds_with_nothing_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("empty").display().to_string();
    let term = dir.path().join("termination-log");
    let partial = runner()
        .args(["finalize", "--output", &out, "--shards", "2", "--partial", "--termination-message-path"])
        .arg(&term)
        .output()
        .expect("runs");
    assert!(partial.status.success(), "{}", String::from_utf8_lossy(&partial.stderr));
    let tm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&term).expect("message")).expect("json");
    assert_eq!((tm["outcome"].as_str(), tm["completed"].as_u64()), (Some("done"), Some(0)));
    assert!(tm["message"].as_str().is_some_and(|m| m.contains("nothing to merge")), "{tm}");
    let full = runner().args(["finalize", "--output", &out, "--shards", "2"]).output().expect("runs");
    assert!(!full.status.success(), "a full finalize needs the job's shards");
}
