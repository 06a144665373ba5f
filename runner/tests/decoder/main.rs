//! The decoder on the real SmolLM2-135M-Instruct GGUF: tokenizer and greedy parity with
//! llama.cpp (fixtures made by scripts/reference/), and the engine's batching guarantees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use barge_runner::decoder::engine::{Engine, EngineConfig, GenRequest, GenResult};
use barge_runner::decoder::kv_cache::KvCache;
use barge_runner::decoder::ops::StepLayout;
use barge_runner::decoder::sampling::SamplingParams;
use barge_runner::decoder::{self, DecoderModel, Kernels};
use barge_runner::types::ChatMessage;
use barge_runner::types::Finish;
use candle_core::Device;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// A model file: the path in `env`, else `scripts/fetch-model.sh name` fetches it into the cache.
fn fetched(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/fetch-model.sh"))
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .expect("runs scripts/fetch-model.sh");
    assert!(out.status.success(), "fetch-model.sh {name} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The SmolLM2 GGUF.
fn gguf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("BARGE_SMOLLM2_GGUF", "smollm2"))
}

fn load() -> DecoderModel {
    decoder::load(gguf(), &Device::Cpu, Kernels::Quantized).expect("SmolLM2 loads")
}

fn fixture(name: &str) -> Value {
    let path = repo_root().join("runner/tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("fixture exists")).expect("fixture is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..SamplingParams::default() }
}

fn config(max_seqs: usize) -> EngineConfig {
    EngineConfig { max_seqs, step_tokens: 512, kv_cache_mib: 256 }
}

/// Runs `requests` through one engine to the end; results in tag order.
fn generate(model: DecoderModel, cfg: EngineConfig, requests: Vec<GenRequest>) -> Vec<GenResult> {
    let DecoderModel { decoder, vocab, .. } = model;
    let mut engine = Engine::new(decoder, cfg);
    for r in requests {
        engine.add(r).expect("the request fits the cache");
    }
    let mut out = Vec::new();
    while !engine.is_idle() {
        out.extend(engine.step(&vocab).expect("a step runs"));
    }
    out.sort_by_key(|r| r.tag);
    out
}

fn request(tag: u64, prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> GenRequest {
    GenRequest { tag, prompt, max_tokens, sampling, stop: Vec::new() }
}

fn chat_prompt(model: &DecoderModel, user: &str) -> Vec<u32> {
    let template = model.template.as_ref().expect("SmolLM2 has a chat template");
    let text =
        template.render(&[ChatMessage { role: "user".into(), content: user.into() }]).expect("renders");
    model.vocab.prompt_ids(&text).expect("tokenizes")
}

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colours.",
    "Explain what a CPU does in one sentence.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "Give me a name for a pet turtle.",
    "Why is the sky blue?",
];

#[test]
fn tokenizer_matches_llama_cpp() {
    let model = load();
    let cases = fixture("smollm2_tokenizer.json");
    let cases = cases["cases"].as_array().expect("a case list");
    assert!(cases.len() >= 30, "the fixture covers many strings");
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let got = model.vocab.encode(text).expect("tokenizes");
        if got != ids(&case["ids"]) {
            mismatches.push(format!("{text:?}: barge {got:?} vs llama.cpp {:?}", ids(&case["ids"])));
        }
        // Decoding the ids gives the text back, control tokens left out.
        let decoded = model.vocab.decode(&got);
        if !text.contains("<|") {
            assert_eq!(decoded, text, "round trip of {text:?}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn greedy_tokens_match_llama_cpp() {
    let model = load();
    let fx = fixture("smollm2_greedy.json");
    let chats = fx["chats"].as_array().expect("chats");
    let template = model.template.as_ref().expect("a template");
    let mut requests = Vec::new();
    for (i, chat) in chats.iter().enumerate() {
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).expect("messages");
        let text = template.render(&messages).expect("renders");
        assert_eq!(text, chat["prompt"].as_str().expect("prompt"), "rendered template of chat {i}");
        let prompt = model.vocab.prompt_ids(&text).expect("tokenizes");
        assert_eq!(prompt, ids(&chat["prompt_ids"]), "prompt ids of chat {i}");
        requests.push(request(i as u64, prompt, 16, greedy()));
    }
    let completions = fx["completions"].as_array().expect("completions");
    for (j, c) in completions.iter().enumerate() {
        let prompt = model.vocab.prompt_ids(c["prompt"].as_str().expect("prompt")).expect("tokenizes");
        assert_eq!(prompt, ids(&c["prompt_ids"]), "prompt ids of completion {j}");
        requests.push(request((chats.len() + j) as u64, prompt, 16, greedy()));
    }
    let expected: Vec<&Value> = chats.iter().chain(completions).collect();
    let vocab_eos = model.vocab.eos;
    let results = generate(model, config(32), requests);
    let (mut exact, mut report, mut confident_misses) = (0, Vec::new(), Vec::new());
    for (r, want) in results.iter().zip(&expected) {
        let mut want_ids = ids(&want["greedy_ids"]);
        // llama.cpp's list ends with EOS when the answer ended early; Barge stops before it.
        if want_ids.last().copied() == vocab_eos {
            want_ids.pop();
        }
        let Some(at) = (0..want_ids.len().max(r.tokens.len())).find(|&i| want_ids.get(i) != r.tokens.get(i))
        else {
            exact += 1;
            continue;
        };
        // How sure llama.cpp was of its own choice there (top-1 minus top-2 logit).
        let margin = want["margins"][at].as_f64().unwrap_or(f64::INFINITY);
        report.push(format!(
            "#{} diverges at token {at} (llama.cpp margin {margin:.3}): barge {:?} vs llama.cpp {}",
            r.tag, r.text, want["greedy_text"]
        ));
        if margin >= CONFIDENT_MARGIN {
            confident_misses.push(r.tag);
        }
    }
    let share = exact as f64 / results.len() as f64;
    eprintln!(
        "greedy parity: {exact} of {} ({:.0} %) equal for 16 tokens\n{}",
        results.len(),
        share * 100.0,
        report.join("\n")
    );
    // The quantized kernels follow llama.cpp's arithmetic to the bit (see the logits test),
    // so even near-ties must go the same way.
    assert!(
        exact == results.len() && confident_misses.is_empty(),
        "only {exact} of {} prompts match llama.cpp's first 16 greedy tokens",
        results.len()
    );
}

/// A logit gap llama.cpp's own arithmetic variations do not bridge.
const CONFIDENT_MARGIN: f64 = 0.5;

#[test]
fn a_request_gets_the_same_greedy_answer_alone_and_among_32_others() {
    let model = load();
    let prompts: Vec<Vec<u32>> =
        (0..33).map(|i| chat_prompt(&model, QUESTIONS[i % QUESTIONS.len()])).collect();
    // Vary lengths so the batch mixes prefill and decode steps.
    let batch: Vec<GenRequest> =
        prompts.iter().enumerate().map(|(i, p)| request(i as u64, p.clone(), 24 + i % 9, greedy())).collect();
    let together = generate(model, config(64), batch);
    for probe in [0usize, 7, 32] {
        let alone = generate(
            load(),
            config(1),
            vec![request(probe as u64, prompts[probe].clone(), 24 + probe % 9, greedy())],
        );
        assert_eq!(alone[0].tokens, together[probe].tokens, "request {probe}: alone vs batched");
        assert_eq!(alone[0].text, together[probe].text);
    }
}

#[test]
fn seeded_sampling_is_reproducible_in_any_batch() {
    let model = load();
    let prompt = chat_prompt(&model, "Tell me a short story about a fox.");
    let filler = chat_prompt(&model, QUESTIONS[1]);
    let sampled =
        |seed| SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 50, seed, ..SamplingParams::default() };
    let mut batch =
        vec![request(0, prompt.clone(), 32, sampled(42)), request(1, prompt.clone(), 32, sampled(7))];
    batch.extend((2..10).map(|i| request(i, filler.clone(), 20, sampled(i))));
    let together = generate(model, config(16), batch);
    let alone = generate(load(), config(1), vec![request(0, prompt, 32, sampled(42))]);
    assert_eq!(alone[0].tokens, together[0].tokens, "seed 42 alone vs in a batch");
    assert_ne!(together[0].tokens, together[1].tokens, "different seeds draw differently");
}

#[test]
fn max_tokens_and_stop_strings_end_generation() {
    let model = load();
    let prompt = chat_prompt(&model, "Count from one to twenty in words, separated by commas.");
    let vocab_len = model.vocab.len();
    let first = generate(model, config(4), vec![request(0, prompt.clone(), 12, greedy())]);
    assert_eq!(first[0].finish, Finish::Length);
    assert_eq!(first[0].completion_tokens, 12);
    assert_eq!(first[0].tokens.len(), 12);
    assert!(first[0].tokens.iter().all(|&t| (t as usize) < vocab_len));

    // Stop on a piece of the text the model is known to produce; it must be cut there.
    let text = first[0].text.clone();
    let cut = text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i);
    let stop: String = text[cut..].chars().take(3).collect();
    let at = text.find(&stop).expect("the stop string is in the text");
    let mut req = request(0, prompt, 12, greedy());
    req.stop = vec!["never appears".into(), stop.clone()];
    let stopped = generate(load(), config(4), vec![req]);
    assert_eq!(stopped[0].finish, Finish::Stop(stop.clone()));
    assert_eq!(stopped[0].text, text[..at], "text before {stop:?}");
}

#[test]
fn a_small_kv_budget_makes_requests_wait_not_fail_or_change() {
    let model = load();
    let prompts: Vec<Vec<u32>> = QUESTIONS.iter().map(|q| chat_prompt(&model, q)).collect();
    let reqs = || {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| request(i as u64, p.clone(), 40, greedy()))
            .collect::<Vec<_>>()
    };
    let roomy = generate(model, config(16), reqs());
    // 45 KB a token: 8 MiB is 11 blocks of 16 tokens, room for two of these ~70-token
    // sequences at a time, so the rest wait (and the newest is set back when both grow).
    let tight = EngineConfig { max_seqs: 16, step_tokens: 7, kv_cache_mib: 8 };
    let cramped = generate(load(), tight, reqs());
    assert_eq!(cramped.len(), roomy.len());
    for (a, b) in roomy.iter().zip(&cramped) {
        assert_eq!(a.tokens, b.tokens, "request {} under a tight budget and chunked prefill", a.tag);
    }
}

/// A request that could never fit the cache (an absurd `max_tokens`, as a request line may
/// carry) is refused alone, before it can stop the sequences around it.
#[test]
fn a_request_larger_than_the_whole_cache_is_refused_and_the_others_finish() {
    let model = load();
    let prompt = chat_prompt(&model, QUESTIONS[0]);
    let DecoderModel { decoder, vocab, .. } = model;
    let mut engine = Engine::new(decoder, EngineConfig { max_seqs: 4, step_tokens: 64, kv_cache_mib: 8 });
    let capacity = engine.capacity_tokens();
    engine.add(request(0, prompt.clone(), 8, greedy())).expect("a small request is queued");
    for (tag, max_tokens) in [(1, usize::MAX), (2, capacity)] {
        let refused = engine.add(request(tag, prompt.clone(), max_tokens, greedy())).expect_err("refused");
        assert_eq!(refused.tag, tag);
        assert!(refused.reason.contains(&format!("KV cache of {capacity} tokens")), "{}", refused.reason);
    }
    engine.add(request(3, prompt, 8, greedy())).expect("a small request is queued");
    let mut done = Vec::new();
    while !engine.is_idle() {
        done.extend(engine.step(&vocab).expect("a step runs"));
    }
    let mut tags: Vec<u64> = done.iter().map(|r| r.tag).collect();
    tags.sort();
    assert_eq!(tags, [0, 3]);
    assert!(engine.take_refused().is_empty(), "nothing was dropped mid-run");
}

/// The Gemma 3 GGUF.
fn gemma3() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("BARGE_GEMMA3_GGUF", "gemma3"))
}

/// Gemma 3, the second family: SentencePiece vocabulary, no chat template, and greedy
/// completions that follow llama.cpp's wherever llama.cpp was sure.
#[test]
fn gemma3_tokenizes_and_completes_like_llama_cpp() {
    let model = decoder::load(gemma3(), &Device::Cpu, Kernels::Quantized).expect("Gemma 3 loads");
    assert_eq!(model.architecture, "gemma3");
    assert!(model.template.is_none(), "this GGUF carries no chat template");
    let fx = fixture("gemma3.json");
    for case in fx["tokenizer"].as_array().expect("tokenizer cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(model.vocab.encode(text).expect("tokenizes"), ids(&case["ids"]), "ids of {text:?}");
        let mut want = ids(&case["ids_bos"]);
        // llama.cpp adds BOS even before a BOS already in the text (and warns); Barge adds it
        // once, so templates that write `{{ bos_token }}` themselves get one.
        if want.starts_with(&[2, 2]) {
            want.remove(0);
        }
        assert_eq!(model.vocab.prompt_ids(text).expect("tokenizes"), want, "prompt ids of {text:?}");
    }
    let cases = fx["completions"].as_array().expect("completions");
    let requests = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prompt = model.vocab.prompt_ids(c["prompt"].as_str().expect("prompt")).expect("tokenizes");
            assert_eq!(prompt, ids(&c["prompt_ids"]), "prompt ids of completion {i}");
            request(i as u64, prompt, 16, greedy())
        })
        .collect();
    let results = generate(model, config(8), requests);
    let mut exact = 0;
    for (r, c) in results.iter().zip(cases) {
        let want = ids(&c["greedy_ids"]);
        match (0..16).find(|&i| want.get(i) != r.tokens.get(i)) {
            None => exact += 1,
            Some(at) => {
                let margin = c["margins"][at].as_f64().unwrap_or(f64::INFINITY);
                eprintln!(
                    "gemma3 #{} diverges at token {at} (llama.cpp margin {margin:.3}): {:?}",
                    r.tag, r.text
                );
                assert!(margin < CONFIDENT_MARGIN, "completion {} differs where llama.cpp was sure", r.tag);
            }
        }
    }
    eprintln!("gemma3 greedy parity: {exact} of {}", results.len());
    assert!(exact * 2 >= results.len(), "only {exact} of {} completions match for 16 tokens", results.len());
}

/// One forward pass of `ids` at positions `start..` of a single sequence whose prompt is
/// `prompt_len` tokens; the last token's logits.
fn last_logits(
    model: &DecoderModel,
    cache: &KvCache,
    ids: &[u32],
    start: usize,
    prompt_len: usize,
) -> Vec<f32> {
    let layout = StepLayout {
        positions: (start..start + ids.len()).collect(),
        seq_of_token: vec![0; ids.len()],
        tables: vec![(0..cache.total_blocks() as u32).collect()],
        prompt_lens: vec![prompt_len],
    };
    model.decoder.forward(ids, &layout, &[ids.len() - 1], cache).expect("a forward pass")
}

/// llama.cpp's largest logits after each prompt and after the first generated token, equal
/// to the last bit: the quantized kernels, norms, rotary embeddings, softmax and both of
/// llama.cpp's attention orders (a prompt read in one batch, a token read alone) follow it.
#[test]
fn logits_equal_llama_cpp_bit_for_bit() {
    let model = load();
    let fx = fixture("smollm2_logits.json");
    let (layers, kv_dim) = model.decoder.cache_shape();
    let mut mismatches = Vec::new();
    for (i, e) in fx["entries"].as_array().expect("entries").iter().enumerate() {
        let prompt = ids(&e["prompt_ids"]);
        let cache = KvCache::new(layers, kv_dim, prompt.len().div_ceil(16) + 1);
        let after_prompt = last_logits(&model, &cache, &prompt, 0, prompt.len());
        let next = e["next"].as_u64().expect("next") as u32;
        let after_next = last_logits(&model, &cache, &[next], prompt.len(), prompt.len());
        for (stage, logits) in [("after_prompt", &after_prompt), ("after_next", &after_next)] {
            for pair in e[stage].as_array().expect("top logits") {
                let (id, want) =
                    (pair[0].as_u64().expect("id") as usize, pair[1].as_f64().expect("logit") as f32);
                if logits[id].to_bits() != want.to_bits() {
                    mismatches.push(format!("#{i} {stage} token {id}: {} vs llama.cpp {want}", logits[id]));
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{} logits differ:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// A Hugging Face Llama folder made from the SmolLM2 GGUF: dequantized weights under their
/// Hugging Face names (Q and K back in the halves layout Hugging Face rotates), `config.json`,
/// the vocabulary as `tokenizer.json` and the template in `tokenizer_config.json`.
fn write_safetensors_folder(dir: &Path) {
    use barge_runner::decoder::gguf::Gguf;
    use barge_runner::decoder::vocab::Vocab;
    let mut g = Gguf::open(gguf()).expect("the GGUF opens");
    let key = |k: &str| g.usize(&format!("llama.{k}")).expect("metadata").expect(k);
    let (hidden, layers, heads, kv_heads) = (
        key("embedding_length"),
        key("block_count"),
        key("attention.head_count"),
        key("attention.head_count_kv"),
    );
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden, "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": 49152, "rms_norm_eps": g.f32("llama.attention.layer_norm_rms_epsilon").expect("eps"),
        "rope_theta": g.f32("llama.rope.freq_base").expect("base"), "max_position_embeddings": 2048,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
    let (tokenizer, _, _) = Vocab::bpe_tokenizer_json(&g).expect("a BPE vocabulary");
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("tokenizer.json");
    let template = g.string("tokenizer.chat_template").expect("metadata").expect("a template");
    let tokenizer_config = serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": template,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string())
        .expect("tokenizer_config.json");

    let head_dim = hidden / heads;
    // GGUF stores Q and K rows of each head as interleaved pairs (2i, 2i+1); Hugging Face as
    // halves (i, i + d/2).
    let halves = |t: candle_core::Tensor, n: usize| {
        let cols = t.dim(1).expect("2-D");
        t.reshape((n, head_dim / 2, 2, cols))
            .and_then(|t| t.transpose(1, 2))
            .and_then(|t| t.contiguous())
            .and_then(|t| t.reshape((n * head_dim, cols)))
            .expect("reshapes")
    };
    let mut tensors = std::collections::HashMap::new();
    tensors
        .insert("model.embed_tokens.weight".to_string(), g.tensor("token_embd.weight").expect("embeddings"));
    tensors.insert("model.norm.weight".to_string(), g.tensor("output_norm.weight").expect("norm"));
    for i in 0..layers {
        for (gguf_name, hf_name) in barge_runner::decoder::llama::LAYER_TENSORS {
            let t = g.tensor(&format!("blk.{i}.{gguf_name}.weight")).expect("a layer tensor");
            let t = match gguf_name {
                "attn_q" => halves(t, heads),
                "attn_k" => halves(t, kv_heads),
                _ => t,
            };
            tensors.insert(format!("model.layers.{i}.{hf_name}.weight"), t);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("model.safetensors");
}

/// The safetensors path (config, Hugging Face names, halves rotary layout, `tokenizer.json`,
/// the template from `tokenizer_config.json`) on the same weights: the same prompt ids, and the
/// same greedy tokens as llama.cpp wherever llama.cpp was sure (f32 activations, no 8-bit
/// rounding, so near-ties may differ).
#[test]
fn a_safetensors_llama_folder_answers_like_its_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_safetensors_folder(dir.path());
    let model = decoder::load(dir.path(), &Device::Cpu, Kernels::Quantized).expect("the folder loads");
    assert_eq!(model.architecture, "llama");
    let fx = fixture("smollm2_greedy.json");
    let template = model.template.as_ref().expect("the template from tokenizer_config.json");
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, chat) in fx["chats"].as_array().expect("chats").iter().enumerate() {
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).expect("messages");
        let prompt =
            model.vocab.prompt_ids(&template.render(&messages).expect("renders")).expect("tokenizes");
        assert_eq!(prompt, ids(&chat["prompt_ids"]), "prompt ids of chat {i}");
        requests.push(request(i as u64, prompt, 16, greedy()));
        expected.push(chat);
    }
    let results = generate(model, config(32), requests);
    let mut exact = 0;
    for (r, want) in results.iter().zip(&expected) {
        let want_ids = ids(&want["greedy_ids"]);
        match (0..want_ids.len().min(r.tokens.len())).find(|&i| want_ids[i] != r.tokens[i]) {
            None => exact += 1,
            Some(at) => {
                let margin = want["margins"][at].as_f64().unwrap_or(f64::INFINITY);
                assert!(
                    margin < CONFIDENT_MARGIN,
                    "chat {} differs at token {at} where llama.cpp was sure",
                    r.tag
                );
            }
        }
    }
    eprintln!("safetensors folder: {exact} of {} chats equal llama.cpp's 16 tokens", results.len());
    assert!(exact * 2 >= results.len(), "only {exact} of {} chats match", results.len());
}
