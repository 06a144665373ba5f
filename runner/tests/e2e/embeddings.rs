//! The runner's embeddings are sentence-transformers' embeddings.

use serde_json::{Value, json};

use crate::common::*;

fn reference() -> Value {
    let path = repo_root().join("runner/tests/fixtures/minilm_reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("the committed reference file"))
        .expect("reference JSON")
}

#[test]
fn embeddings_match_sentence_transformers_and_usage_counts_real_tokens() {
    let reference = reference();
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| s.as_str().expect("text"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let mut lines: Vec<String> =
        sentences.iter().enumerate().map(|(i, s)| embed_line(&format!("s{i}"), s)).collect();
    // All sentences again as one request: batching must not change a vector.
    lines.push(
        json!({"custom_id": "all", "method": "POST", "url": "/v1/embeddings", "body": {"input": sentences}})
            .to_string(),
    );
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.path().join("out");
    run_local(&input, &out, &["--max-batch-size", "4"]);
    let results = read_jsonl(&out.join("results.jsonl"));
    assert_eq!(results.len(), sentences.len() + 1);
    let all = results.last().expect("the combined request");
    let mut worst = 1.0f64;
    for (i, expected) in reference["embeddings"].as_array().expect("embeddings").iter().enumerate() {
        let expected: Vec<f32> =
            expected.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number") as f32).collect();
        let got = embedding(&results[i], 0);
        assert_eq!(got.len(), 384);
        let cos = cosine(&got, &expected);
        worst = worst.min(cos);
        assert!(cos >= 0.99, "sentence {i} {:?}: cosine {cos}", sentences[i]);
        let usage = &results[i]["response"]["body"]["usage"]["prompt_tokens"];
        assert_eq!(usage, &reference["token_counts"][i], "token count of sentence {i}");
        let batched = embedding(all, i);
        let drift = got.iter().zip(&batched).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(drift < 1e-5, "sentence {i} alone vs batched differs by {drift}");
    }
    eprintln!("worst cosine against sentence-transformers: {worst:.6}");
    let total: u64 =
        reference["token_counts"].as_array().expect("counts").iter().filter_map(Value::as_u64).sum();
    assert_eq!(all["response"]["body"]["usage"]["prompt_tokens"], total);
}

#[test]
fn base64_embeddings_decode_to_the_float_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let float = embed_line("f", "The harbour lights came on one by one.");
    let mut b64: Value =
        serde_json::from_str(&embed_line("b", "The harbour lights came on one by one.")).expect("json");
    b64["body"]["encoding_format"] = json!("base64");
    std::fs::write(&input, format!("{float}\n{b64}\n")).expect("write");
    let out = dir.path().join("out");
    run_local(&input, &out, &[]);
    let results = read_jsonl(&out.join("results.jsonl"));
    use base64::Engine;
    let text = results[1]["response"]["body"]["data"][0]["embedding"].as_str().expect("base64 text");
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).expect("valid base64");
    let decoded: Vec<f32> =
        bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    assert_eq!(decoded, embedding(&results[0], 0));
}
