//! Llama-family decoders (Llama 2/3, SmolLM, Mistral-style GQA) from GGUF files or Hugging Face
//! safetensors folders, and Gemma 3 (the same skeleton with per-head Q/K norms, sandwich norms,
//! GeGLU, scaled embeddings and sliding-window layers) from GGUF. The forward pass runs one step of continuous batching: the new tokens
//! of every running sequence packed into one matrix, so each Linear layer is one large GEMM.

use std::path::Path;

use candle_core::{DType, Device, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::gguf::Gguf;
use super::kv_cache::KvCache;
use super::ops::{ActQuant, Gate, PagedAttention, Rope, StepLayout, gated, rms_norm, round_activations};
use super::quant::{QMatMul, QMatrix, QRows};
use super::unhandled;
use super::{Decoder, Kernels};
use crate::models::ModelError;
use crate::models::cpu_ops::Linear;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f64,
    pub rope_base: f32,
    pub context: usize,
    /// GGUF stores Q and K permuted for pairwise (interleaved) rotary embeddings.
    pub interleaved_rope: bool,
    /// Gemma 3's differences from Llama; `None` for Llama.
    pub gemma: Option<GemmaConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    /// Rotary base of the sliding-window layers (the global ones use `rope_base`).
    pub rope_base_local: f32,
    pub sliding_window: usize,
    /// Every `pattern`-th layer is global; the others slide.
    pub pattern: usize,
    pub attn_scale: f32,
}

struct Layer {
    attn_norm: Tensor,
    /// Gemma 3: per-head RMS norms of queries and keys.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Gemma 3: norms of the attention and feed-forward outputs before the residual add.
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// A sliding-window layer (Gemma 3).
    window: Option<usize>,
    /// Q, K and V in one product.
    qkv: Proj,
    out: Proj,
    ffn_norm: Tensor,
    /// Gate and up in one product.
    gate_up: Proj,
    down: Proj,
}

/// A projection: ggml's block kernels on the file's own blocks, or an f32 GEMM over weights
/// dequantized once, its activations rounded as llama.cpp's would be for that weight type.
enum Proj {
    Blocks(QMatrix),
    Dense(Linear, ActQuant),
}

impl Proj {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        match self {
            Proj::Blocks(m) => x.contiguous()?.apply_op1_no_bwd(&QMatMul(m)),
            Proj::Dense(linear, quant) => linear.forward(&round_activations(x, *quant)?),
        }
    }
}

pub struct Llama {
    cfg: LlamaConfig,
    device: Device,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Proj,
    /// Only when the input embeddings are not tied to `lm_head`.
    embed: Option<Linear>,
    rope: Rope,
    /// Gemma 3's sliding-window layers rotate with their own base.
    rope_local: Option<Rope>,
    /// GGUF models: keys and values rounded to f16 as in llama.cpp's cache.
    f16_cache: bool,
}

/// The weights by their GGUF names (`blk.N.attn_q.weight`), whatever file they come from.
trait Weights {
    fn get(&mut self, name: &str) -> Result<Tensor, ModelError>;
    fn has(&self, name: &str) -> bool;
    /// How llama.cpp would round the activations multiplied by this weight.
    fn act_quant(&self, name: &str) -> ActQuant;
    /// The weight in its own blocks, when the quantized kernels run its format.
    fn blocks(&mut self, name: &str) -> Result<Option<QRows>, ModelError>;
}

impl Weights for Gguf {
    fn get(&mut self, name: &str) -> Result<Tensor, ModelError> {
        self.tensor(name)
    }
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }
    fn act_quant(&self, name: &str) -> ActQuant {
        ActQuant::for_weight(self.tensor_type(name))
    }
    fn blocks(&mut self, name: &str) -> Result<Option<QRows>, ModelError> {
        Gguf::blocks(self, name)
    }
}

struct Safetensors<'a> {
    vb: VarBuilder<'a>,
    path: String,
}

/// QK-norm weights (Qwen3, Gemma 3), by GGUF's and Hugging Face's names.
const QK_NORM_TENSORS: [(&str, &str); 2] =
    [("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")];

/// A Llama layer's tensors: GGUF's name and Hugging Face's (`blk.N.<gguf>` is
/// `model.layers.N.<hf>`).
pub const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

impl Safetensors<'_> {
    /// The Hugging Face name of a GGUF-named tensor.
    fn hf_name(name: &str) -> String {
        if let Some(rest) = name.strip_prefix("blk.") {
            let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let (part, suffix) = rest.split_once('.').unwrap_or((rest, ""));
            let part = LAYER_TENSORS
                .iter()
                .chain(&QK_NORM_TENSORS)
                .find(|(g, _)| *g == part)
                .map_or(part, |(_, h)| *h);
            return format!("model.layers.{layer}.{part}.{suffix}");
        }
        match name {
            "token_embd.weight" => "model.embed_tokens.weight".into(),
            "output_norm.weight" => "model.norm.weight".into(),
            "output.weight" => "lm_head.weight".into(),
            other => other.into(),
        }
    }
}

impl Weights for Safetensors<'_> {
    fn get(&mut self, name: &str) -> Result<Tensor, ModelError> {
        let hf = Self::hf_name(name);
        self.vb
            .get_unchecked_dtype(&hf, DType::F32)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|source| ModelError::Weights { path: format!("{}:{hf}", self.path), source })
    }
    fn has(&self, name: &str) -> bool {
        self.vb.contains_tensor(&Self::hf_name(name))
    }
    fn act_quant(&self, _: &str) -> ActQuant {
        ActQuant::None
    }
    fn blocks(&mut self, _: &str) -> Result<Option<QRows>, ModelError> {
        Ok(None)
    }
}

/// `config.json` of a Hugging Face Llama checkpoint.
#[derive(Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch = g.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.required_usize(&key("embedding_length"))?;
        let heads = g.required_usize(&key("attention.head_count"))?;
        let head_dim = g.usize(&key("attention.key_length"))?.unwrap_or(hidden / heads.max(1));
        let vocab = match g.usize(&key("vocab_size"))? {
            Some(v) => v,
            None => g.strings("tokenizer.ggml.tokens")?.map_or(0, |t| t.len()),
        };
        let layers = g.required_usize(&key("block_count"))?;
        let gemma = if arch == "gemma3" {
            Some(GemmaConfig {
                // llama.cpp's values: the local base is fixed, 27B scales by hidden/heads.
                rope_base_local: 10_000.0,
                sliding_window: g.usize(&key("attention.sliding_window"))?.unwrap_or(512),
                pattern: 6,
                attn_scale: if layers == 62 {
                    1.0 / ((hidden / heads.max(1)) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                },
            })
        } else {
            None
        };
        let cfg = LlamaConfig {
            hidden,
            layers,
            heads,
            kv_heads: g.usize(&key("attention.head_count_kv"))?.unwrap_or(heads),
            head_dim,
            ffn: g.required_usize(&key("feed_forward_length"))?,
            vocab,
            eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f64,
            rope_base: g.f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            context: {
                let context = g.usize(&key("context_length"))?.unwrap_or(2048);
                // Outside Gemma 3 (whose layers alternate), a sliding window is served exactly by
                // serving no longer sequences: see `unhandled::window_context`.
                match g.usize(&key("attention.sliding_window"))? {
                    Some(w) if arch != "gemma3" => context.min(w),
                    _ => context,
                }
            },
            // llama.cpp's "normal" rope for llama, "neox" (halves) for gemma3.
            interleaved_rope: gemma.is_none(),
            gemma,
        };
        cfg.check(&g.path().display().to_string())?;
        Ok(cfg)
    }

    fn check(&self, path: &str) -> Result<(), ModelError> {
        if self.heads == 0
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.vocab == 0
            || self.hidden == 0
            || self.layers == 0
            || self.ffn == 0
            || self.context == 0
        {
            return Err(ModelError::BadFile {
                path: path.into(),
                detail: format!(
                    "inconsistent shape: {} heads, {} KV heads, head size {}, vocabulary {}, hidden size {}, {} layers, feed-forward size {}, context {}",
                    self.heads,
                    self.kv_heads,
                    self.head_dim,
                    self.vocab,
                    self.hidden,
                    self.layers,
                    self.ffn,
                    self.context
                ),
            });
        }
        Ok(())
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

impl Llama {
    pub fn from_gguf(g: &mut Gguf, device: &Device, kernels: Kernels) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_gguf(g)?;
        unhandled::refuse(&g.path().display().to_string(), &unhandled::in_gguf(g, &cfg)?)?;
        Self::load(cfg, g, device, kernels)
    }

    /// A Hugging Face folder: `config.json` and `*.safetensors`. Returns the BOS and EOS ids
    /// the config names, for the vocabulary.
    pub fn from_folder(
        dir: &Path,
        config: &[u8],
        device: &Device,
    ) -> Result<(Self, Option<u32>, Option<u32>), ModelError> {
        let path = dir.join("config.json").display().to_string();
        let bad = |e: serde_json::Error| ModelError::BadFile { path: path.clone(), detail: e.to_string() };
        let raw: serde_json::Value = serde_json::from_slice(config).map_err(bad)?;
        let hf = HfConfig::deserialize(&raw).map_err(bad)?;
        unhandled::refuse(&path, &unhandled::in_config(&raw))?;
        let cfg = LlamaConfig {
            hidden: hf.hidden_size,
            layers: hf.num_hidden_layers,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            ffn: hf.intermediate_size,
            vocab: hf.vocab_size,
            eps: hf.rms_norm_eps,
            rope_base: hf.rope_theta.unwrap_or(10_000.0),
            context: hf
                .max_position_embeddings
                .unwrap_or(2048)
                .min(unhandled::window_context(&raw).unwrap_or(usize::MAX)),
            interleaved_rope: false,
            gemma: None,
        };
        cfg.check(&path)?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::BadFile { path: dir.display().to_string(), detail: e.to_string() })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::MissingFile { dir: dir.display().to_string(), file: "*.safetensors" });
        }
        let vb = load_safetensors(&files)?;
        let mut weights = Safetensors { vb, path: dir.display().to_string() };
        unhandled::refuse(&weights.path, &unhandled::in_tensors(|n| weights.has(n), false))?;
        if !weights.has("output.weight") && raw["tie_word_embeddings"] != true {
            return Err(ModelError::BadFile {
                path: weights.path.clone(),
                detail: "there is no lm_head.weight, and config.json's tie_word_embeddings is not true: the output projection is missing".into(),
            });
        }
        let eos = match hf.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Some(serde_json::Value::Array(list)) => {
                list.first().and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
            }
            _ => None,
        };
        Ok((Self::load(cfg, &mut weights, device, Kernels::F32)?, hf.bos_token_id, eos))
    }

    fn load(
        cfg: LlamaConfig,
        w: &mut dyn Weights,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let on = |t: Tensor| -> Result<Tensor, ModelError> {
            t.to_device(device).map_err(|source| ModelError::Weights { path: "device".into(), source })
        };
        let linear = |t: Tensor| -> Result<Linear, ModelError> {
            Linear::with_bias(on(t)?, None, false)
                .map(Linear::batch_invariant)
                .map_err(|source| ModelError::Weights { path: "linear".into(), source })
        };
        let cat = |parts: &[Tensor]| -> Result<Tensor, ModelError> {
            Tensor::cat(parts, 0).map_err(|source| ModelError::Weights { path: "concat".into(), source })
        };
        // The block kernels run on the CPU; elsewhere (and for formats they do not run) the
        // weights are dequantized for the device's GEMMs.
        let blocks = kernels == Kernels::Quantized && device.is_cpu();
        let proj = |w: &mut dyn Weights, names: &[String]| -> Result<Proj, ModelError> {
            if blocks {
                let mut parts = Vec::with_capacity(names.len());
                for n in names {
                    match w.blocks(n)? {
                        Some(m) => parts.push(m),
                        None => break,
                    }
                }
                if parts.len() == names.len()
                    && let Some(m) = QRows::concat(&parts)
                {
                    return Ok(Proj::Blocks(m.pack()));
                }
            }
            let tensors = names.iter().map(|n| w.get(n)).collect::<Result<Vec<_>, _>>()?;
            let weight = if tensors.len() == 1 { tensors[0].clone() } else { cat(&tensors)? };
            Ok(Proj::Dense(linear(weight)?, w.act_quant(&names[0])))
        };
        let vec = |t: Tensor| -> Result<Vec<f32>, ModelError> {
            t.to_vec1::<f32>().map_err(|source| ModelError::Weights { path: "norm".into(), source })
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            let gemma = cfg.gemma.as_ref();
            let optional = |w: &mut dyn Weights, n: &str| -> Result<Option<Tensor>, ModelError> {
                if gemma.is_some() && w.has(&name(n)) { Ok(Some(on(w.get(&name(n))?)?)) } else { Ok(None) }
            };
            let qk_norm = match (optional(w, "attn_q_norm")?, optional(w, "attn_k_norm")?) {
                (Some(q), Some(k)) => Some((vec(q)?, vec(k)?)),
                _ => None,
            };
            let window = gemma.filter(|g| (i + 1) % g.pattern != 0).map(|g| g.sliding_window);
            let post_attn_norm = optional(w, "post_attention_norm")?;
            let post_ffn_norm = optional(w, "post_ffw_norm")?;
            layers.push(Layer {
                qk_norm,
                post_attn_norm,
                post_ffn_norm,
                window,
                attn_norm: on(w.get(&name("attn_norm"))?)?,
                qkv: proj(w, &[name("attn_q"), name("attn_k"), name("attn_v")])?,
                out: proj(w, &[name("attn_output")])?,
                ffn_norm: on(w.get(&name("ffn_norm"))?)?,
                gate_up: proj(w, &[name("ffn_gate"), name("ffn_up")])?,
                down: proj(w, &[name("ffn_down")])?,
            });
        }
        let norm = on(w.get("output_norm.weight")?)?;
        let f16_cache = w.act_quant("token_embd.weight") != ActQuant::None;
        let (lm_head, embed) = if w.has("output.weight") {
            (proj(w, &["output.weight".into()])?, Some(linear(w.get("token_embd.weight")?)?))
        } else {
            (proj(w, &["token_embd.weight".into()])?, None)
        };
        // Llama 3.1+ GGUFs carry their long-context rotary scaling as per-frequency divisors.
        let factors = if w.has("rope_freqs.weight") {
            let f = vec(w.get("rope_freqs.weight")?)?;
            if f.len() != cfg.head_dim / 2 {
                return Err(ModelError::BadFile {
                    path: "rope_freqs.weight".into(),
                    detail: format!(
                        "{} rotary frequency factors for a head size of {}",
                        f.len(),
                        cfg.head_dim
                    ),
                });
            }
            Some(f)
        } else {
            None
        };
        let rope = Rope::with_factors(
            cfg.head_dim,
            cfg.context,
            cfg.rope_base,
            cfg.interleaved_rope,
            factors.as_deref(),
        );
        let rope_local = cfg
            .gemma
            .as_ref()
            .map(|g| Rope::new(cfg.head_dim, cfg.context, g.rope_base_local, cfg.interleaved_rope));
        Ok(Llama { cfg, device: device.clone(), layers, norm, lm_head, embed, rope, rope_local, f16_cache })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &StepLayout,
        cache: &KvCache,
        layer: usize,
    ) -> CandleResult<Tensor> {
        let l = &self.layers[layer];
        let rope = match (&self.rope_local, l.window) {
            (Some(local), Some(_)) => local,
            _ => &self.rope,
        };
        let op = PagedAttention {
            layout,
            kv: cache.layer(layer),
            rope,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
            scale: self.cfg.gemma.as_ref().map_or(1.0 / (self.cfg.head_dim as f32).sqrt(), |g| g.attn_scale),
            window: l.window,
            qk_norm: l.qk_norm.as_ref().map(|(q, k)| (q.as_slice(), k.as_slice(), self.cfg.eps as f32)),
            f16_cache: self.f16_cache,
        };
        if self.device.is_cpu() {
            return qkv.contiguous()?.apply_op1_no_bwd(&op);
        }
        // The block cache lives in host memory: attention runs there on other devices.
        qkv.to_device(&Device::Cpu)?.apply_op1_no_bwd(&op)?.to_device(&self.device)
    }
}

#[allow(unsafe_code)]
fn load_safetensors(files: &[std::path::PathBuf]) -> Result<VarBuilder<'static>, ModelError> {
    // SAFETY: the files are memory-mapped read-only and not changed while the runner holds them
    // (they sit in the runner's own model cache or a folder the user handed over).
    unsafe { VarBuilder::from_mmaped_safetensors(files, DType::F32, &Device::Cpu) }
        .map_err(|source| ModelError::Weights { path: files[0].display().to_string(), source })
}

impl Decoder for Llama {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }

    fn context_len(&self) -> usize {
        self.cfg.context.min(self.rope.max_positions())
    }

    fn cache_shape(&self) -> (usize, usize) {
        (self.cfg.layers, self.cfg.kv_dim())
    }

    fn forward(
        &self,
        tokens: &[u32],
        layout: &StepLayout,
        logit_rows: &[usize],
        cache: &KvCache,
    ) -> CandleResult<Vec<f32>> {
        let mut x = match (&self.embed, &self.lm_head) {
            (Some(table), _) | (None, Proj::Dense(table, _)) => table.rows(tokens, &self.device)?,
            (None, Proj::Blocks(table)) => block_rows(table, tokens, &self.device)?,
        };
        let eps = self.cfg.eps as f32;
        let gate = if self.cfg.gemma.is_some() {
            x = (x * (self.cfg.hidden as f64).sqrt())?;
            Gate::GeluTanh
        } else {
            Gate::Silu
        };
        let post = |y: Tensor, norm: &Option<Tensor>| match norm {
            Some(w) => rms_norm(&y, w, eps),
            None => Ok(y),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let qkv = layer.qkv.forward(&h)?;
            let attended = self.attention(&qkv, layout, cache, i)?;
            let o = layer.out.forward(&attended)?;
            x = (x + post(o, &layer.post_attn_norm)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let g = gated(&layer.gate_up.forward(&h)?, gate)?;
            let m = layer.down.forward(&g)?;
            x = (x + post(m, &layer.post_ffn_norm)?)?;
        }
        if logit_rows.is_empty() {
            return Ok(Vec::new()); // every sequence of the step is still reading its prompt
        }
        let rows: Vec<u32> = logit_rows.iter().map(|&r| r as u32).collect();
        let last = x.index_select(&Tensor::from_vec(rows, logit_rows.len(), &self.device)?, 0)?;
        let last = rms_norm(&last, &self.norm, eps)?;
        self.lm_head.forward(&last)?.flatten_all()?.to_vec1::<f32>()
    }
}

/// Embedding rows from a tied table kept in blocks.
fn block_rows(table: &QMatrix, ids: &[u32], device: &Device) -> CandleResult<Tensor> {
    let mut out = Vec::with_capacity(ids.len() * table.cols());
    for &id in ids {
        if id as usize >= table.rows() {
            candle_core::bail!("token id {id} is outside the vocabulary of {}", table.rows());
        }
        table.row_f32(id as usize, &mut out);
    }
    Tensor::from_vec(out, (ids.len(), table.cols()), device)
}
