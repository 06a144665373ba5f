//! Several runners on one output: a stale runner is fenced off by the one that replaced it, and
//! two jobs never mix their results.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn args(input: &std::path::Path, output: &std::path::Path) -> Vec<String> {
    ["run", "--model", &minilm().display().to_string(), "--input", &input.display().to_string()]
        .into_iter()
        .map(str::to_string)
        .chain(["--output".into(), output.display().to_string(), "--window".into(), "40".into()])
        .collect()
}

fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args([sig, &pid]).status().expect("kill runs").success());
}

fn checkpoint(output: &std::path::Path) -> Value {
    let body = std::fs::read(output.join("_barge/shard-00000-of-00001/checkpoint.json")).expect("checkpoint");
    serde_json::from_slice(&body).expect("JSON")
}

/// A runner frozen mid-shard (as a pod on a partitioned node) while a replacement finishes the
/// shard must not write again when it wakes: its next checkpoint is refused, it stops with a
/// clear reason, and the finished output stays exactly as the replacement left it.
#[test]
fn a_stale_runner_that_wakes_after_its_replacement_finished_is_fenced_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 1200);
    let output = dir.path().join("out");
    let stale = runner().args(args(&input, &output)).stderr(Stdio::piped()).spawn().expect("starts");
    wait_for("two checkpoints", Duration::from_secs(300), || checkpointed_chunks(&output) >= 2);
    signal(&stale, "-STOP");

    let replacement = run_ok(&args(&input, &output).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&replacement.stderr).contains("resuming after the last checkpoint"));
    let results = std::fs::read(output.join("results.jsonl")).expect("results");
    let finished = checkpoint(&output);
    assert_eq!((finished["done"].as_bool(), finished["epoch"].as_u64()), (Some(true), Some(2)));

    signal(&stale, "-CONT");
    let woke = stale.wait_with_output().expect("the stale runner ends");
    let log = String::from_utf8_lossy(&woke.stderr);
    assert!(!woke.status.success(), "the stale runner must not succeed: {log}");
    assert!(log.contains("another runner took shard 0/1 over"), "{log}");
    assert_eq!(checkpoint(&output), finished, "the checkpoint is not rolled back");
    assert_eq!(std::fs::read(output.join("results.jsonl")).expect("results"), results);
    let ids = custom_ids(&read_jsonl(&output.join("results.jsonl")));
    assert_eq!(ids, (0..1200).map(|i| format!("req-{i}")).collect::<Vec<_>>());
}

/// Two different jobs started at once on one output: the output is claimed by exactly one, and
/// the other fails at once naming the difference; the winner's results hold only its requests.
#[test]
fn two_jobs_started_at_once_on_one_output_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let inputs: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("{name}.jsonl"));
            let body: String =
                (0..600).map(|i| embed_line(&format!("{name}-{i}"), &sentence(i)) + "\n").collect();
            std::fs::write(&path, body).expect("write input");
            path
        })
        .collect();
    let children: Vec<_> = inputs
        .iter()
        .map(|input| runner().args(args(input, &output)).stderr(Stdio::piped()).spawn().expect("starts"))
        .collect();
    let ends: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("ends")).collect();
    let winners: Vec<usize> = (0..2).filter(|&i| ends[i].status.success()).collect();
    assert_eq!(winners.len(), 1, "exactly one job may own the output");
    let (winner, loser) = (winners[0], 1 - winners[0]);
    let log = String::from_utf8_lossy(&ends[loser].stderr);
    assert!(log.contains("holds a different job"), "{log}");
    let name = ["a", "b"][winner];
    let ids = custom_ids(&read_jsonl(&output.join("results.jsonl")));
    assert_eq!(ids, (0..600).map(|i| format!("{name}-{i}")).collect::<Vec<_>>());
}

/// Finalize merges only what the checkpoint vouches for: a chunk repeated in place of another
/// (an overlap) or a record missing (a gap) is refused, naming the shard, never merged quietly.
#[test]
fn finalize_refuses_chunks_that_overlap_or_leave_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_requests(&input, 200);
    let output = dir.path().join("out");
    run_local(&input, &output, &["--window", "40"]);
    let shard = output.join("_barge/shard-00000-of-00001");
    let mut chunks: Vec<_> = std::fs::read_dir(&shard)
        .expect("shard folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("chunk-")))
        .collect();
    chunks.sort();
    assert!(chunks.len() >= 3, "{chunks:?}");
    let finalize = || {
        runner()
            .args(["finalize", "--output", &output.display().to_string(), "--shards", "1"])
            .output()
            .expect("runs")
    };
    let second = std::fs::read(&chunks[1]).expect("chunk");
    let third = std::fs::read(&chunks[2]).expect("chunk");

    std::fs::write(&chunks[2], &second).expect("overlap");
    let out = finalize();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an overlap must not merge");
    assert!(log.contains("overlap"), "{log}");

    let half: Vec<&[u8]> = third.split(|&b| b == b'\n').collect();
    std::fs::write(&chunks[2], half[..half.len() / 2].join(&b'\n')).expect("gap");
    let out = finalize();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a gap must not merge");
    assert!(log.contains("where its checkpoint counts"), "{log}");

    std::fs::write(&chunks[2], &third).expect("restore");
    assert!(finalize().status.success(), "the intact chunks merge");
}
