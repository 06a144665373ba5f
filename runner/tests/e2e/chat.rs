//! Chat and completion jobs through the binary on the real SmolLM2 GGUF: OpenAI and Anthropic
//! shapes, error records, and a killed chat job resumed exactly once.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

fn chat_line(id: &str, user: &str, extra: Value) -> String {
    let mut body =
        json!({"model": "smollm2", "messages": [{"role": "user", "content": user}], "temperature": 0});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write input");
}

fn run_gguf(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let (model, input, output) =
        (smollm2().display().to_string(), input.display().to_string(), output.display().to_string());
    run_ok(&[&["run", "--model", &model, "--input", &input, "--output", &output][..], extra].concat())
}

fn by_id(records: &[Value]) -> std::collections::HashMap<String, Value> {
    records.iter().map(|r| (r["custom_id"].as_str().unwrap_or_default().to_string(), r.clone())).collect()
}

#[test]
fn an_openai_chat_job_writes_chat_completions_and_error_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let lines = vec![
        chat_line("short", "What is the capital of France?", json!({"max_tokens": 5})),
        chat_line("free", "Say hello.", json!({"max_tokens": 40, "stop": ["\n"]})),
        json!({"custom_id": "plain", "method": "POST", "url": "/v1/completions",
               "body": {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}}).to_string(),
        "{this is not json".to_string(),
        chat_line("two", "Hi", json!({"n": 2})),
        chat_line("huge", "Hi", json!({"max_tokens": 100000})),
    ];
    write_lines(&input, &lines);
    let out = dir.path().join("out");
    run_gguf(&input, &out, &[]);

    let results = by_id(&read_jsonl(&out.join("results.jsonl")));
    assert_eq!(results.len(), 3, "{results:?}");
    let short = &results["short"]["response"]["body"];
    assert_eq!(short["object"], "chat.completion");
    assert_eq!(short["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(short["choices"][0]["message"]["role"], "assistant");
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 5, "max_tokens 5 gives exactly 5 tokens");
    // Usage counts the tokenizer's ids: the same question's prompt in the llama.cpp fixture
    // (SmolLM2's template adds its default system prompt).
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("runner/tests/fixtures/smollm2_greedy.json")).expect("fixture"),
    )
    .expect("json");
    let same = fixture["chats"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["messages"][0]["content"] == "What is the capital of France?"))
        .expect("the fixture has the question");
    let prompt_tokens = short["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert_eq!(Some(prompt_tokens as usize), same["prompt_ids"].as_array().map(Vec::len));
    assert_eq!(short["usage"]["total_tokens"].as_u64(), Some(prompt_tokens + 5));
    let free = &results["free"]["response"]["body"]["choices"][0];
    assert_eq!(free["finish_reason"], "stop");
    assert!(!free["message"]["content"].as_str().expect("text").contains('\n'), "the stop string is cut");
    let plain = &results["plain"]["response"]["body"];
    assert_eq!(plain["object"], "text_completion");
    assert_eq!(plain["usage"]["completion_tokens"], 6);
    assert!(plain["choices"][0]["text"].as_str().is_some_and(|t| t.contains("Paris")), "{plain}");

    let errors = read_jsonl(&out.join("errors.jsonl"));
    let codes: Vec<(Option<&str>, &str)> = errors
        .iter()
        .map(|e| (e["custom_id"].as_str(), e["error"]["code"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (None, "invalid_json"),
            (Some("two"), "unsupported_parameter"),
            (Some("huge"), "context_length_exceeded")
        ]
    );
    let huge = errors[2]["error"]["message"].as_str().expect("message");
    assert!(huge.contains("100000") && huge.contains("8192"), "names both numbers: {huge}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["requestCounts"]["completed"], 3, "{manifest}");
    assert_eq!(manifest["requestCounts"]["failed"], 3, "{manifest}");
}

/// `max_tokens` near u64::MAX once wrapped around in `prompt + max_tokens` and was answered;
/// under a small KV budget it is refused like any request too long for it, alone.
#[test]
fn an_absurd_max_tokens_is_refused_alone_under_a_small_kv_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let lines = vec![
        chat_line("absurd", "Hi", json!({"max_tokens": u64::MAX})),
        chat_line("wrapping", "Hi", json!({"max_completion_tokens": u64::MAX - 20})),
        chat_line("short", "What is the capital of France?", json!({"max_tokens": 5})),
    ];
    write_lines(&input, &lines);
    let out = dir.path().join("out");
    let run = run_gguf(&input, &out, &["--kv-cache-mib", "16"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let results = by_id(&read_jsonl(&out.join("results.jsonl")));
    assert_eq!(results.keys().collect::<Vec<_>>(), ["short"]);
    let errors = read_jsonl(&out.join("errors.jsonl"));
    let codes: Vec<(Option<&str>, &str)> = errors
        .iter()
        .map(|e| (e["custom_id"].as_str(), e["error"]["code"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        codes,
        [(Some("absurd"), "context_length_exceeded"), (Some("wrapping"), "context_length_exceeded")]
    );
}

#[test]
fn anthropic_lines_get_anthropic_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let line = |id: &str, params: Value| json!({"custom_id": id, "params": params}).to_string();
    write_lines(
        &input,
        &[
            line(
                "a1",
                json!({"model": "smollm2", "max_tokens": 8, "temperature": 0,
                "system": "You are a terse assistant.", "messages": [{"role": "user", "content": "Name a fruit."}]}),
            ),
            line(
                "a2",
                json!({"model": "smollm2", "max_tokens": 64, "temperature": 0, "stop_sequences": [" "],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe the sea."}]}]}),
            ),
            line(
                "bad",
                json!({"model": "smollm2", "max_tokens": 8, "top_p": 3, "messages": [{"role": "user", "content": "x"}]}),
            ),
        ],
    );
    let out = dir.path().join("out");
    run_gguf(&input, &out, &[]);
    let results = by_id(&read_jsonl(&out.join("results.jsonl")));
    let a1 = &results["a1"]["result"];
    assert_eq!(a1["type"], "succeeded");
    assert_eq!(a1["message"]["role"], "assistant");
    assert_eq!(a1["message"]["stop_reason"], "max_tokens");
    assert_eq!(a1["message"]["usage"]["output_tokens"], 8);
    let a2 = &results["a2"]["result"]["message"];
    assert_eq!(a2["stop_reason"], "stop_sequence");
    assert_eq!(a2["stop_sequence"], " ");
    assert!(!a2["content"][0]["text"].as_str().expect("text").contains(' '));
    let bad = &results["bad"]["result"];
    assert_eq!(bad["type"], "errored");
    assert!(bad["error"]["error"]["message"].as_str().is_some_and(|m| m.contains("top_p")), "{bad}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(
        (manifest["requestCounts"]["completed"].as_u64(), manifest["requestCounts"]["failed"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn a_killed_chat_job_resumes_with_every_request_exactly_once() {
    const N: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..N)
        .map(|i| {
            chat_line(
                &format!("c{i}"),
                &format!("Write one sentence about the number {i}."),
                json!({"max_tokens": 24}),
            )
        })
        .collect();
    write_lines(&input, &lines);
    let out = dir.path().join("out");
    let (model, input_s, out_s) =
        (smollm2().display().to_string(), input.display().to_string(), out.display().to_string());
    let args = [
        "run",
        "--model",
        &model,
        "--input",
        &input_s,
        "--output",
        &out_s,
        "--window",
        "4",
        "--max-seqs",
        "8",
    ];
    let mut child = runner().args(args).stderr(Stdio::null()).spawn().expect("starts");
    wait_for("two checkpoints", Duration::from_secs(300), || checkpointed_chunks(&out) >= 2);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(!out.join("results.jsonl").exists(), "killed before the end");

    let rerun = run_ok(&args);
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("resuming after the last checkpoint"));
    let results = read_jsonl(&out.join("results.jsonl"));
    let expected: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    assert_eq!(custom_ids(&results), expected, "every request once, in input order");
    assert!(
        results
            .iter()
            .all(|r| r["response"]["body"]["usage"]["completion_tokens"].as_u64().is_some_and(|n| n > 0))
    );
}

#[test]
fn a_model_without_a_chat_template_refuses_chat_but_completes() {
    let gguf = gemma3().display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_lines(
        &input,
        &[
            chat_line("chat", "Hi", json!({"max_tokens": 4})),
            json!({"custom_id": "text", "method": "POST", "url": "/v1/completions",
                   "body": {"prompt": "Water boils at", "max_tokens": 4, "temperature": 0}})
            .to_string(),
        ],
    );
    let out = dir.path().join("out");
    let (input, output) = (input.display().to_string(), out.display().to_string());
    run_ok(&["run", "--model", &gguf, "--input", &input, "--output", &output]);
    let results = read_jsonl(&out.join("results.jsonl"));
    assert_eq!(custom_ids(&results), ["text"]);
    assert_eq!(results[0]["response"]["body"]["usage"]["completion_tokens"], 4);
    let errors = read_jsonl(&out.join("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0]["custom_id"].as_str(), errors[0]["error"]["code"].as_str()),
        (Some("chat"), Some("no_chat_template"))
    );
}

/// The kernels change answers (the quantized ones are llama.cpp's arithmetic, f32 is not), so
/// they are part of the job: the manifest records them, and the same output resumed or rerun
/// with other kernels is refused as another job, naming them.
#[test]
fn a_job_is_bound_to_its_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &[chat_line("only", "Hi", json!({"max_tokens": 3}))]);
    let out = dir.path().join("out");
    let run = run_gguf(&input, &out, &["--kernels", "f32"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["model"]["kernels"], "f32");

    let (model, input, output) =
        (smollm2().display().to_string(), input.display().to_string(), out.display().to_string());
    let other = runner()
        .args(["run", "--model", &model, "--input", &input, "--output", &output, "--kernels", "quantized"])
        .output()
        .expect("runs");
    assert_eq!(other.status.code(), Some(1));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("kernels was f32, now quantized"), "{err}");
}
