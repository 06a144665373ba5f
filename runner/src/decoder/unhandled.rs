//! What changes a decoder's math and the llama loader does not apply: a config key, a GGUF
//! metadata key or a tensor. A model that carries one is refused, naming it. Running it anyway
//! would answer, fluently and wrongly, with no error anywhere (a Qwen2 folder without its Q/K/V
//! biases did exactly that).

use serde_json::Value;

use super::gguf::Gguf;
use super::llama::LlamaConfig;
use crate::models::ModelError;

/// The error for a model with unhandled features, naming each.
pub fn refuse(path: &str, found: &[String]) -> Result<(), ModelError> {
    if found.is_empty() {
        return Ok(());
    }
    Err(ModelError::Unsupported {
        what: format!(
            "{path} uses {}: barge-runner does not apply {} yet, and answering without {} would be silently wrong",
            found.join("; "),
            if found.len() == 1 { "it" } else { "them" },
            if found.len() == 1 { "it" } else { "them" },
        ),
    })
}

/// Keys of a Hugging Face `config.json` that change the math and that the loader ignores.
pub fn in_config(config: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let truthy = |k: &str| config.get(k).is_some_and(|v| v.as_bool() == Some(true));
    let present = |k: &str| config.get(k).is_some_and(|v| !v.is_null());
    if config["model_type"] == "qwen2" {
        found.push("Q/K/V projection biases (`model_type` qwen2)".to_string());
    }
    for key in ["attention_bias", "mlp_bias"] {
        if truthy(key) {
            found.push(format!("`{key}`"));
        }
    }
    if let Some(scaling) = config.get("rope_scaling").filter(|v| !v.is_null()) {
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str);
        if kind != Some("default") {
            found.push(format!("`rope_scaling` of type `{}`", kind.unwrap_or("unnamed")));
        }
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if present(key) {
            found.push(format!("`{key}`"));
        }
    }
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(act) = config.get(key).and_then(Value::as_str)
            && act != "silu"
        {
            found.push(format!("`{key}` {act} (the loader runs SiLU)"));
        }
    }
    if let Some(f) = config.get("partial_rotary_factor").and_then(Value::as_f64)
        && f != 1.0
    {
        found.push(format!("`partial_rotary_factor` {f}"));
    }
    found
}

/// A sliding window shorter than the context (Mistral 7B v0.1), as the context to serve: a
/// sequence no longer than the window attends to all of itself either way, so the model is run
/// exactly by serving no longer sequences (longer requests get `context_length_exceeded`).
pub fn window_context(config: &Value) -> Option<usize> {
    let window = config.get("sliding_window").and_then(Value::as_u64)?;
    let used = config.get("use_sliding_window").and_then(Value::as_bool) != Some(false);
    used.then(|| usize::try_from(window).ok()).flatten()
}

/// Tensors of layer 0 whose presence means math the loader does not do (biases, QK-norm), by
/// their GGUF names; `has` answers for the model's own naming. Gemma 3's QK-norm is handled.
pub fn in_tensors(has: impl Fn(&str) -> bool, qk_norm_handled: bool) -> Vec<String> {
    let mut found = Vec::new();
    for part in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
        let name = format!("blk.0.{part}.bias");
        if has(&name) {
            found.push(format!("biases (`{name}`)"));
            break;
        }
    }
    if !qk_norm_handled && (has("blk.0.attn_q_norm.weight") || has("blk.0.attn_k_norm.weight")) {
        found.push("QK-norm (`blk.0.attn_q_norm.weight`)".to_string());
    }
    found
}

/// GGUF metadata that changes the math and that the loader ignores, for `cfg`'s architecture.
pub fn in_gguf(g: &Gguf, cfg: &LlamaConfig) -> Result<Vec<String>, ModelError> {
    let arch = g.architecture()?;
    let key = |k: &str| format!("{arch}.{k}");
    let mut found = Vec::new();
    if let Some(kind) = g.string(&key("rope.scaling.type"))?
        && kind != "none"
    {
        found.push(format!("`{}` {kind}", key("rope.scaling.type")));
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if g.f32(&key(k))?.is_some_and(|v| v != 0.0) {
            found.push(format!("`{}`", key(k)));
        }
    }
    if let Some(dims) = g.usize(&key("rope.dimension_count"))?
        && dims < cfg.head_dim
    {
        found.push(format!(
            "`{}` {dims} (a partial rotation of a head size of {})",
            key("rope.dimension_count"),
            cfg.head_dim
        ));
    }
    found.extend(in_tensors(|n| g.has_tensor(n), cfg.gemma.is_some()));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_llama_config_has_nothing_unhandled() {
        let smollm2 = json!({"model_type": "llama", "hidden_act": "silu", "rope_scaling": null,
                             "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": true,
                             "max_position_embeddings": 8192});
        assert!(in_config(&smollm2).is_empty());
        let mistral = json!({"model_type": "mistral", "sliding_window": null, "hidden_act": "silu"});
        assert!(in_config(&mistral).is_empty());
        let qwen_window_off = json!({"model_type": "llama", "sliding_window": 4096, "use_sliding_window": false,
                                     "max_position_embeddings": 32768});
        assert!(in_config(&qwen_window_off).is_empty());
        assert_eq!(window_context(&qwen_window_off), None);
        let mistral_v01 =
            json!({"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768});
        assert!(in_config(&mistral_v01).is_empty());
        assert_eq!(window_context(&mistral_v01), Some(4096), "served up to its window, exactly");
    }

    #[test]
    fn each_key_that_changes_the_math_is_named() {
        for (config, named) in [
            (json!({"model_type": "qwen2"}), "qwen2"),
            (json!({"attention_bias": true}), "`attention_bias`"),
            (json!({"mlp_bias": true}), "`mlp_bias`"),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
                "`rope_scaling` of type `llama3`",
            ),
            (json!({"rope_scaling": {"type": "linear", "factor": 2.0}}), "`rope_scaling` of type `linear`"),
            (json!({"final_logit_softcapping": 30.0}), "`final_logit_softcapping`"),
            (json!({"hidden_act": "gelu_pytorch_tanh"}), "gelu_pytorch_tanh"),
            (json!({"partial_rotary_factor": 0.5}), "`partial_rotary_factor`"),
        ] {
            let found = in_config(&config);
            assert!(found.iter().any(|f| f.contains(named)), "{config}: {found:?}");
        }
    }

    #[test]
    fn bias_and_qk_norm_tensors_are_named_unless_handled() {
        let qwen = |n: &str| n == "blk.0.attn_q.bias" || n == "blk.0.attn_k.bias";
        assert_eq!(in_tensors(qwen, false), ["biases (`blk.0.attn_q.bias`)"]);
        let qwen3 = |n: &str| n == "blk.0.attn_q_norm.weight";
        assert_eq!(in_tensors(qwen3, false).len(), 1);
        assert!(in_tensors(qwen3, true).is_empty(), "Gemma 3's QK-norm is applied");
    }

    #[test]
    fn the_refusal_names_the_file_and_every_feature() {
        let err = refuse("m/config.json", &["`a`".into(), "`b`".into()]).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("m/config.json uses `a`; `b`") && msg.contains("silently wrong"), "{msg}");
        assert!(refuse("x", &[]).is_ok());
    }

    /// Through the loader: a GGUF whose metadata asks for rope scaling the loader does not do is
    /// refused before any weight is read, naming the key.
    #[test]
    fn a_gguf_with_unhandled_metadata_is_refused_by_the_loader() {
        use candle_core::quantized::gguf_file::{self, Value as G};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scaled.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        let meta = [
            ("general.architecture", G::String("llama".into())),
            ("llama.embedding_length", G::U32(64)),
            ("llama.attention.head_count", G::U32(4)),
            ("llama.block_count", G::U32(2)),
            ("llama.feed_forward_length", G::U32(128)),
            ("llama.vocab_size", G::U32(100)),
            ("llama.rope.scaling.type", G::String("yarn".into())),
            ("llama.final_logit_softcapping", G::F32(30.0)),
        ];
        let refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut file, &refs, &[]).expect("write a GGUF");
        drop(file);
        let mut g = Gguf::open(&path).expect("open");
        let err =
            super::super::llama::Llama::from_gguf(&mut g, &candle_core::Device::Cpu, Default::default())
                .err()
                .expect("refused");
        let msg = err.to_string();
        assert!(msg.contains("`llama.rope.scaling.type` yarn"), "{msg}");
        assert!(msg.contains("`llama.final_logit_softcapping`"), "{msg}");
    }

    /// Through the loader, on a folder: a Qwen2 config (biases the loader would drop), and a
    /// checkpoint without `lm_head.weight` whose embeddings are not tied.
    #[test]
    fn a_folder_with_unhandled_math_is_refused_by_the_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |extra: Value| {
            let mut c = json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100,
                               "rms_norm_eps": 1e-5, "hidden_act": "silu"});
            for (k, v) in extra.as_object().expect("an object") {
                c[k] = v.clone();
            }
            std::fs::write(dir.path().join("config.json"), c.to_string()).expect("config.json");
        };
        let embed = candle_core::Tensor::zeros((100, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
            .expect("a tensor");
        let tensors = std::collections::HashMap::from([("model.embed_tokens.weight".to_string(), embed)]);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).expect("save");
        let load = || {
            crate::decoder::load(dir.path(), &candle_core::Device::Cpu, Default::default())
                .err()
                .expect("refused")
                .to_string()
        };

        config(json!({"model_type": "qwen2"}));
        let msg = load();
        assert!(msg.contains("config.json uses Q/K/V projection biases (`model_type` qwen2)"), "{msg}");
        config(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}));
        assert!(load().contains("`rope_scaling` of type `llama3`"));
        config(json!({"tie_word_embeddings": false}));
        assert!(load().contains("no lm_head.weight"));
    }
}
