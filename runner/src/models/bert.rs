//! BERT-family encoders (candle-transformers' BertModel) with sentence-transformers pooling.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use super::{EmbeddingModel, ModelError, ModelInfo, Pooling, SentenceConfig};
use crate::backend::{BackendError, Batch, Embedder, TextTokenizer};

pub struct BertEmbedder {
    model: BertModel,
    pooling: Pooling,
    normalize: bool,
    dimensions: usize,
    device: Device,
}

pub fn load(dir: &Path, config: &[u8], device: &Device) -> Result<EmbeddingModel, ModelError> {
    let config_path = dir.join("config.json");
    let config: Config = serde_json::from_slice(config).map_err(|e| ModelError::BadFile {
        path: config_path.display().to_string(),
        detail: e.to_string(),
    })?;
    let sentence = SentenceConfig::read(dir)?;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(ModelError::MissingFile { dir: dir.display().to_string(), file: "model.safetensors" });
    }
    let werr = |source| ModelError::Weights { path: weights.display().to_string(), source };
    let tensors = candle_core::safetensors::load(&weights, device).map_err(werr)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = BertModel::load(vb, &config).map_err(werr)?;

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
    let embedder = BertEmbedder {
        model,
        pooling: sentence.pooling,
        normalize: sentence.normalize,
        dimensions: config.hidden_size,
        device: device.clone(),
    };
    Ok(EmbeddingModel { embedder: Box::new(embedder), tokenizer, info })
}

impl BertEmbedder {
    fn forward(&self, batch: &Batch) -> candle_core::Result<Vec<f32>> {
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
        let types = ids.zeros_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
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
