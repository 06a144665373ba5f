//! Text generation with decoder models: loading (GGUF or safetensors), the vocabulary and chat
//! template, and the continuous-batching engine the generation task drives.

pub mod chat_template;
pub mod cpu;
pub mod engine;
pub mod gguf;
pub mod kv_cache;
pub mod llama;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod spm;
pub mod unhandled;
pub mod vocab;

use std::path::Path;

use candle_core::Device;

use crate::models::ModelError;
use chat_template::ChatTemplate;
use kv_cache::KvCache;
use ops::StepLayout;
use vocab::Vocab;

/// A decoder the engine can drive: one forward pass over a step's packed tokens.
pub trait Decoder: Send {
    fn vocab_size(&self) -> usize;
    /// The longest sequence (prompt plus output) the model handles.
    fn context_len(&self) -> usize;
    /// (layers, key/value width) of the cache it needs.
    fn cache_shape(&self) -> (usize, usize);
    /// Logits (`logit_rows.len()` × vocabulary) for the given rows of the step, after writing
    /// every token's keys and values into `cache`.
    fn forward(
        &self,
        tokens: &[u32],
        layout: &StepLayout,
        logit_rows: &[usize],
        cache: &KvCache,
    ) -> candle_core::Result<Vec<f32>>;
}

pub struct DecoderModel {
    pub decoder: Box<dyn Decoder>,
    pub vocab: Vocab,
    /// `None` when the model has no template: chat requests then fail with a clear error.
    pub template: Option<ChatTemplate>,
    pub architecture: String,
}

/// Whether `path` holds a decoder (a GGUF file, or a folder whose config names a decoder).
pub fn is_decoder(path: &Path) -> bool {
    if path.is_file() {
        return path.extension().is_some_and(|e| e == "gguf");
    }
    std::fs::read(path.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["model_type"].as_str().map(|t| DECODER_TYPES.contains(&t)))
        .unwrap_or(false)
}

/// Hugging Face `model_type`s served by the llama decoder.
const DECODER_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];
/// GGUF `general.architecture`s served by the llama decoder (Gemma 3 as its variant).
const GGUF_ARCHITECTURES: [&str; 3] = ["llama", "mistral", "gemma3"];

/// How a GGUF's quantized weights are multiplied (safetensors weights are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// ggml's block kernels on the file's own blocks: llama.cpp's arithmetic bit for bit and a
    /// quarter of the memory traffic. Formats they do not run (k-quants) fall back to f32.
    #[default]
    Quantized,
    /// Weights dequantized once to f32 and multiplied with large GEMMs.
    F32,
}

/// Loads a decoder from a GGUF file or a model folder; the architecture comes from the files.
pub fn load(path: &Path, device: &Device, kernels: Kernels) -> Result<DecoderModel, ModelError> {
    let (decoder, vocab, architecture): (Box<dyn Decoder>, Vocab, String) = if path.is_file() {
        let mut g = gguf::Gguf::open(path)?;
        let arch = g.architecture()?;
        if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::Unsupported {
                what: format!(
                    "GGUF architecture `{arch}` in {} (supported: {})",
                    path.display(),
                    GGUF_ARCHITECTURES.join(", ")
                ),
            });
        }
        let vocab = Vocab::from_gguf(&g)?;
        (Box::new(llama::Llama::from_gguf(&mut g, device, kernels)?), vocab, arch)
    } else {
        let config = std::fs::read(path.join("config.json"))
            .map_err(|_| ModelError::MissingFile { dir: path.display().to_string(), file: "config.json" })?;
        let (model, bos, eos) = llama::Llama::from_folder(path, &config, device)?;
        let vocab = Vocab::from_folder(path, eos, bos)?;
        (Box::new(model), vocab, "llama".to_string())
    };
    if vocab.len() > decoder.vocab_size() {
        return Err(ModelError::BadFile {
            path: path.display().to_string(),
            detail: format!(
                "the tokenizer has {} tokens but the model only {}",
                vocab.len(),
                decoder.vocab_size()
            ),
        });
    }
    let template = match &vocab.chat_template {
        Some(source) => Some(ChatTemplate::new(source, &vocab.bos_text, &vocab.eos_text).map_err(|e| {
            ModelError::BadFile {
                path: path.display().to_string(),
                detail: format!("the chat template does not compile: {e}"),
            }
        })?),
        None => None,
    };
    Ok(DecoderModel { decoder, vocab, template, architecture })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{self, Value};

    #[test]
    fn an_unsupported_gguf_architecture_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("falcon.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        let arch = Value::String("falcon".into());
        gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).expect("write a GGUF");
        drop(file);
        assert!(is_decoder(&path));
        let err = load(&path, &Device::Cpu, Kernels::default()).err().expect("falcon is not served");
        let msg = err.to_string();
        assert!(msg.contains("`falcon`") && msg.contains("supported: llama, mistral, gemma3"), "{msg}");
    }
}
