//! Randomized tests: the parsers and readers that take untrusted input never panic, whatever
//! they are given, and the shard split never loses or repeats a line.

use std::sync::Arc;

use barge_api::ShardId;
use barge_runner::input::generation;
use barge_runner::input::lines::LineReader;
use barge_runner::input::{openai, shard_range};
use barge_runner::storage::{LocalStore, ObjectStore};
use barge_runner::types::Format;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, numbers at their extremes included.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |x| x.is_finite()).prop_map(|x| json!(x)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A request line of roughly the right shape whose fields hold anything.
fn request_like() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "input",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "encoding_format",
        "dimensions",
        "model",
        "system",
        "stream",
    ]);
    (
        any_json(),
        prop::collection::btree_map(keys, any_json(), 0..8),
        prop::sample::select(vec!["/v1/embeddings", "/v1/chat/completions", "/v1/completions", "/v1/x"]),
    )
        .prop_map(|(id, fields, url)| {
            let body: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            json!({"custom_id": id, "method": "POST", "url": url, "body": body.clone(), "params": body})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_lines_never_panic_the_parsers(line in request_like()) {
        let bytes = line.to_string().into_bytes();
        let _ = openai::parse_line(&bytes, &Map::new());
        let _ = generation::parse_line(&bytes, Format::OpenAi, &Map::new());
        let _ = generation::parse_line(&bytes, Format::Anthropic, &Map::new());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = openai::parse_line(&bytes, &Map::new());
        let _ = generation::parse_line(&bytes, Format::OpenAi, &Map::new());
        let _ = generation::parse_line(&bytes, Format::Anthropic, &Map::new());
        let _ = generation::sniff(&bytes);
    }

    #[test]
    fn shard_ranges_tile_any_file(size in any::<u64>(), count in 1u32..=256) {
        let mut next = 0;
        for index in 0..count {
            let (start, end) = shard_range(size, ShardId { index, count });
            prop_assert_eq!(start, next);
            prop_assert!(end >= start);
            next = end;
        }
        prop_assert_eq!(next, size);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the bytes (CR, BOM, empty lines, no final newline) and however many shards,
    /// every line is read once, by the shard its first byte falls in.
    #[test]
    fn every_line_is_read_by_exactly_one_shard(
        content in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'\n', b'\r', b' ', 0xEF, 0xBB, 0xBF]), 0..200),
        count in 1u32..=9,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (whole, split) = runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
            store.put("in.jsonl", bytes::Bytes::from(content.clone())).await.expect("put");
            let size = content.len() as u64;
            let read = |range: (u64, u64)| {
                let store = store.clone();
                async move {
                    let mut r = LineReader::open_shard(store, "in.jsonl", None, range, 1 << 20).await.expect("open");
                    let mut ends = Vec::new();
                    while let Some(line) = r.next_line().await.expect("read") {
                        ends.push(line.end);
                    }
                    ends
                }
            };
            let whole = read((0, size)).await;
            let mut split = Vec::new();
            for index in 0..count {
                split.extend(read(shard_range(size, ShardId { index, count })).await);
            }
            (whole, split)
        });
        prop_assert_eq!(split, whole);
    }

    /// A GGUF header followed by anything: an error or a model description, never a panic.
    #[test]
    fn arbitrary_gguf_files_never_panic_the_loader(tail in prop::collection::vec(any::<u8>(), 0..512), version in 1u32..=3) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, bytes).expect("write");
        if let Ok(g) = barge_runner::decoder::gguf::Gguf::open(&path) {
            let _ = barge_runner::decoder::llama::LlamaConfig::from_gguf(&g);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Well-formed GGUF files with hostile shapes (zero or huge heads, layers, sizes; any
    /// alignment): the loader answers with an error or a config, never a panic.
    #[test]
    fn hostile_gguf_shapes_never_panic_the_loader(
        arch in prop::sample::select(vec!["llama", "gemma3", "qwen2", ""]),
        values in prop::collection::vec(prop_oneof![Just(0u32), Just(1), Just(2), Just(62), any::<u32>()], 9),
    ) {
        use candle_core::quantized::gguf_file::{self, Value as G};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        let keys = [
            "embedding_length", "attention.head_count", "attention.head_count_kv", "attention.key_length",
            "block_count", "feed_forward_length", "vocab_size", "context_length",
        ];
        let mut metadata: Vec<(String, G)> = vec![
            ("general.architecture".into(), G::String(arch.into())),
            ("general.alignment".into(), G::U32(values[8])),
        ];
        metadata.extend(keys.iter().zip(&values).map(|(k, v)| (format!("{arch}.{k}"), G::U32(*v))));
        let refs: Vec<(&str, &G)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(&path).expect("create");
        gguf_file::write(&mut file, &refs, &[]).expect("write");
        drop(file);
        if let Ok(g) = barge_runner::decoder::gguf::Gguf::open(&path) {
            let _ = barge_runner::decoder::llama::LlamaConfig::from_gguf(&g);
        }
    }
}
