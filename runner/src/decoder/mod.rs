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

impl Kernels {
    /// The name the manifest and the job record give them (the `--kernels` flag's).
    pub fn as_str(self) -> &'static str {
        match self {
            Kernels::Quantized => "quantized",
            Kernels::F32 => "f32",
        }
    }
}

/// Loads a decoder from a GGUF file or a model folder that `architectures::identify` has
/// identified as one of the llama family (Gemma 3 included).
pub fn load(path: &Path, device: &Device, kernels: Kernels) -> Result<DecoderModel, ModelError> {
    let (decoder, vocab, architecture): (Box<dyn Decoder>, Vocab, String) = if path.is_file() {
        let mut g = gguf::Gguf::open(path)?;
        let arch = g.architecture()?;
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
