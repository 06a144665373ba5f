//! BERT-family encoders with sentence-transformers pooling: an own forward pass on candle
//! tensors. On the CPU its Linear layers run as fused kernels (GEMM with bias and GELU in one
//! pass, OpenBLAS with the `openblas` feature); on a GPU the same maths runs as candle ops.

use std::path::Path;

use candle_core::{DType, Device, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use super::cpu_ops::Linear;
use super::{EmbeddingModel, ModelError, ModelInfo, Pooling, SentenceConfig};
use crate::backend::{BackendError, Batch, Embedder, TextTokenizer};

/// The Linear layer stored under `vb` (`weight` and `bias`).
fn dense(vb: &VarBuilder, (out, inp): (usize, usize), gelu: bool) -> CandleResult<Linear> {
    Linear::new(vb.get((out, inp), "weight")?, vb.get(out, "bias")?, gelu)
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, size: usize, eps: f64) -> CandleResult<Self> {
        // Old checkpoints name the parameters gamma/beta.
        let (weight, bias) = match (vb.get(size, "weight"), vb.get(size, "bias")) {
            (Ok(w), Ok(b)) => (w, b),
            _ => (vb.get(size, "gamma")?, vb.get(size, "beta")?),
        };
        Ok(LayerNorm { weight, bias, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    /// Query, key and value in one GEMM (3 × hidden outputs).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> CandleResult<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let attn = vb.pp("attention");
        let this = attn.pp("self");
        let get = |name: &str| -> CandleResult<(Tensor, Tensor)> {
            Ok((this.get((h, h), &format!("{name}.weight"))?, this.get(h, &format!("{name}.bias"))?))
        };
        let (q, k, v) = (get("query")?, get("key")?, get("value")?);
        let qkv =
            Linear::new(Tensor::cat(&[&q.0, &k.0, &v.0], 0)?, Tensor::cat(&[&q.1, &k.1, &v.1], 0)?, false)?;
        Ok(Layer {
            qkv,
            attention_out: dense(&attn.pp("output").pp("dense"), (h, h), false)?,
            attention_norm: LayerNorm::load(&attn.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: dense(&vb.pp("intermediate").pp("dense"), (i, h), true)?,
            output: dense(&vb.pp("output").pp("dense"), (h, i), false)?,
            output_norm: LayerNorm::load(&vb.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
        })
    }

    /// `x`: (n·len, hidden); `mask`: what [`Attention`] needs to ignore padding.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Attention,
        (n, len, heads): (usize, usize, usize),
    ) -> CandleResult<Tensor> {
        let hidden = x.dim(1)?;
        let d = hidden / heads;
        let qkv = self.qkv.forward(x)?;
        let context = match mask {
            #[cfg(feature = "openblas")]
            Attention::Fused(op) => qkv.apply_op1_no_bwd(op)?,
            Attention::Additive(mask) => {
                let qkv = qkv.reshape((n, len, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
                let q = (qkv.get(0)?.contiguous()? * (1.0 / (d as f64).sqrt()))?;
                let k = qkv.get(1)?.contiguous()?;
                let v = qkv.get(2)?.contiguous()?;
                let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n * len, hidden))?
            }
        };
        let attended = self.attention_norm.forward(&(self.attention_out.forward(&context)? + x)?)?;
        let inner = self.intermediate.forward(&attended)?;
        self.output_norm.forward(&(self.output.forward(&inner)? + &attended)?)
    }
}

/// How a layer ignores padding: the fused CPU kernel knows each sequence's length; candle's ops
/// add a large negative to padded keys' scores, as Hugging Face does.
enum Attention {
    #[cfg(feature = "openblas")]
    Fused(super::cpu_ops::FusedAttention),
    Additive(Tensor),
}

pub struct BertEmbedder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    pooling: Pooling,
    normalize: bool,
    dimensions: usize,
    device: Device,
}

fn load_weights(dir: &Path, config: &Config, device: &Device) -> Result<BertEmbedder, ModelError> {
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(ModelError::MissingFile { dir: dir.display().to_string(), file: "model.safetensors" });
    }
    let werr = |source| ModelError::Weights { path: weights.display().to_string(), source };
    let tensors = candle_core::safetensors::load(&weights, device).map_err(werr)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
    let build = || -> CandleResult<BertEmbedder> {
        let (h, emb) = (config.hidden_size, vb.pp("embeddings"));
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<CandleResult<Vec<_>>>()?;
        Ok(BertEmbedder {
            word: emb.get((config.vocab_size, h), "word_embeddings.weight")?,
            position: emb.get((config.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?,
            embedding_norm: LayerNorm::load(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?,
            layers,
            heads: config.num_attention_heads,
            pooling: Pooling::Mean,
            normalize: false,
            dimensions: h,
            device: device.clone(),
        })
    };
    build().map_err(werr)
}

pub fn load(dir: &Path, config: &[u8], device: &Device) -> Result<EmbeddingModel, ModelError> {
    let config_path = dir.join("config.json");
    let config: Config = serde_json::from_slice(config).map_err(|e| ModelError::BadFile {
        path: config_path.display().to_string(),
        detail: e.to_string(),
    })?;
    if config.hidden_act != HiddenAct::Gelu {
        return Err(ModelError::Unsupported {
            what: format!(
                "hidden_act {:?} in {} (BERT models here use exact GELU)",
                config.hidden_act,
                config_path.display()
            ),
        });
    }
    let sentence = SentenceConfig::read(dir)?;
    let mut embedder = load_weights(dir, &config, device)?;
    embedder.pooling = sentence.pooling;
    embedder.normalize = sentence.normalize;

    // sentence-transformers truncates at max_seq_length, never past the position table.
    let max_seq_len =
        sentence.max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::MissingFile { dir: dir.display().to_string(), file: "tokenizer.json" });
    }
    let tokenizer = TextTokenizer::from_file(&tokenizer_path, max_seq_len, sentence.lowercase)?;
    let info = ModelInfo {
        architecture: "bert",
        dimensions: config.hidden_size,
        max_seq_len,
        pooling: sentence.pooling,
        normalize: sentence.normalize,
    };
    Ok(EmbeddingModel { embedder: Box::new(embedder), tokenizer, info })
}

impl BertEmbedder {
    /// Token states, (n, len, hidden); `lengths` are the sequences' unpadded lengths.
    fn encode(&self, ids: &Tensor, mask: &Tensor, lengths: Vec<usize>) -> CandleResult<Tensor> {
        let (n, len) = ids.dims2()?;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?.reshape((n, len, self.dimensions))?;
        let position = self.position.narrow(0, 0, len)?;
        let token_type = self.token_type.narrow(0, 0, 1)?; // every input is one segment
        let x = words.broadcast_add(&position)?.broadcast_add(&token_type)?;
        let mut x = self.embedding_norm.forward(&x.reshape((n * len, self.dimensions))?)?;
        let attention = self.attention_mask(mask, lengths)?;
        for layer in &self.layers {
            x = layer.forward(&x, &attention, (n, len, self.heads))?;
        }
        x.reshape((n, len, self.dimensions))
    }

    fn attention_mask(&self, mask: &Tensor, lengths: Vec<usize>) -> CandleResult<Attention> {
        #[cfg(feature = "openblas")]
        if self.device.is_cpu() {
            let op =
                super::cpu_ops::FusedAttention { heads: self.heads, lengths: std::sync::Arc::new(lengths) };
            return Ok(Attention::Fused(op));
        }
        let _ = lengths;
        let (n, len) = mask.dims2()?;
        // Padding gets the most negative float, so softmax gives it zero.
        let additive =
            ((mask.to_dtype(DType::F32)? - 1.0)? * f64::from(f32::MAX))?.reshape((n, 1, 1, len))?;
        Ok(Attention::Additive(additive))
    }

    fn forward(&self, batch: &Batch) -> CandleResult<Vec<f32>> {
        let (n, len) = (batch.len(), batch.max_len);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for i in 0..n {
            let seq = batch.seq(i);
            ids[i * len..i * len + seq.len()].copy_from_slice(seq);
            mask[i * len..i * len + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let lengths = (0..n).map(|i| batch.seq(i).len()).collect();
        let states = self.encode(&ids, &mask, lengths)?;
        let pooled = match self.pooling {
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = states.broadcast_mul(&mask)?.sum(1)?;
                summed.broadcast_div(&mask.sum(1)?)?
            }
        };
        let pooled = if self.normalize {
            pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?)?
        } else {
            pooled
        };
        pooled.flatten_all()?.to_vec1::<f32>()
    }
}

impl Embedder for BertEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&mut self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.forward(batch).map_err(|source| BackendError::Forward {
            sequences: batch.len(),
            max_len: batch.max_len,
            source,
        })
    }
}
