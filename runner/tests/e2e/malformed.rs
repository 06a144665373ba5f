//! Bad lines become error records with their line numbers; every other line still succeeds.

use serde_json::{Value, json};

use crate::common::*;

#[test]
fn malformed_lines_land_in_errors_with_line_numbers_and_the_rest_succeed() {
    let good = |id: &str| embed_line(id, "a perfectly fine sentence");
    let with_body = |id: &str, body: Value| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": body}).to_string()
    };
    let lines = [
        good("ok-1"),                                                                           // 1
        "{this is not json".to_string(),                                                        // 2
        json!({"method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}).to_string(), // 3
        good("ok-1"), // 4: repeats line 1
        json!({"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": {}}).to_string(), // 5
        with_body("empty", json!({"input": ""})),                  // 6
        String::new(),                                             // 7: blank, skipped
        with_body("huge", json!({"input": "word ".repeat(1000)})), // 8: over --max-line-bytes
        with_body("dims", json!({"input": "x", "dimensions": 128})), // 9
        with_body("vocab", json!({"input": [101, 999999, 102]})),  // 10
        with_body("tokens", json!({"input": [101, 7592, 2088, 102]})), // 11
        good("ok-2"),                                              // 12
        "[1, 2, 3]".to_string(),                                   // 13: JSON, not an object
        json!({"custom_id": 5, "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}})
            .to_string(), // 14
        json!({"custom_id": "get", "method": "GET", "url": "/v1/embeddings", "body": {"input": "x"}})
            .to_string(), // 15
        json!({"custom_id": "nobody", "method": "POST", "url": "/v1/embeddings"}).to_string(), // 16
        with_body("object", json!({"input": {"text": "x"}})),      // 17
        with_body("hex", json!({"input": "x", "encoding_format": "hex"})), // 18
        with_body("nested", json!({"input": [["a"], ["b"]]})),     // 19
        with_body("mixed", json!({"input": ["a", 7]})),            // 20
        json!({"custom_id": "", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}).to_string(), // 21
        json!({"custom_id": "text-body", "method": "POST", "url": "/v1/embeddings", "body": "x"}).to_string(), // 22
        with_body("none", json!({"input": []})), // 23
        json!({"custom_id": "no-url", "method": "POST", "body": {"input": "x"}}).to_string(), // 24
        json!({"custom_id": "k".repeat(600), "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}})
            .to_string(), // 25
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let out = dir.path().join("out");
    run_local(&input, &out, &["--max-line-bytes", "2000"]);
    let results = read_jsonl(&out.join("results.jsonl"));
    assert_eq!(custom_ids(&results), ["ok-1", "tokens", "ok-2"]);
    assert_eq!(results[1]["response"]["body"]["usage"]["prompt_tokens"], 4);

    let errors = read_jsonl(&out.join("errors.jsonl"));
    let shown: Vec<(u64, &str, Value)> = errors
        .iter()
        .map(|e| {
            (
                e["error"]["line"].as_u64().expect("line"),
                e["error"]["code"].as_str().expect("code"),
                e["custom_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (2, "invalid_json", Value::Null),
            (3, "missing_custom_id", Value::Null),
            (4, "duplicate_custom_id", json!("ok-1")),
            (5, "unsupported_url", json!("chat")),
            (6, "missing_input", json!("empty")),
            (8, "line_too_long", Value::Null),
            (9, "unsupported_dimensions", json!("dims")),
            (10, "invalid_input", json!("vocab")),
            (13, "invalid_json", Value::Null),
            (14, "invalid_custom_id", Value::Null),
            (15, "unsupported_method", json!("get")),
            (16, "missing_body", json!("nobody")),
            (17, "invalid_input", json!("object")),
            (18, "invalid_encoding_format", json!("hex")),
            (19, "invalid_input", json!("nested")),
            (20, "invalid_input", json!("mixed")),
            (21, "missing_custom_id", Value::Null),
            (22, "missing_body", json!("text-body")),
            (23, "missing_input", json!("none")),
            (24, "unsupported_url", json!("no-url")),
            (25, "invalid_custom_id", Value::Null),
        ]
    );
    // Each message names what is wrong in the line's own terms.
    let message = |line: u64| {
        errors
            .iter()
            .find(|e| e["error"]["line"] == line)
            .and_then(|e| e["error"]["message"].as_str())
            .unwrap_or("")
    };
    for (line, names) in [
        (14, "custom_id"),
        (15, "GET"),
        (16, "body"),
        (17, "input"),
        (18, "hex"),
        (21, "empty"),
        (22, "object"),
        (23, "empty array"),
        (24, "url"),
        (25, "512"),
    ] {
        assert!(message(line).contains(names), "line {line}: {}", message(line));
    }
    for e in &errors {
        assert_eq!(e["response"], Value::Null);
        assert!(!e["error"]["message"].as_str().expect("message").is_empty());
    }
    assert!(errors[2]["error"]["message"].as_str().expect("message").contains("line 1"));
    assert!(errors[7]["error"]["message"].as_str().expect("message").contains("999999"));

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["requestCounts"], json!({"total": 24, "completed": 3, "failed": 21}));
    assert_eq!(manifest["lines"], 25);
    let files = manifest["model"]["files"].as_array().expect("files");
    let weights = files.iter().find(|f| f["name"] == "model.safetensors").expect("weights listed");
    assert_eq!(weights["sha256"].as_str().expect("sha").len(), 64);
}
