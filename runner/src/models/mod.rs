//! Encoder models behind the backend traits: BERT's forward pass, pooling and the CPU kernels.
//! Which model a folder holds is `architectures.rs`'s to decide.

pub mod bert;
#[cfg(feature = "openblas")]
mod blas;
pub mod cpu_ops;
pub mod pooling;

use std::path::Path;

use candle_core::Device;

use crate::backend::tokenizer::TokenizerError;
use crate::backend::{Embedder, TextTokenizer};
pub use pooling::{Pooling, SentenceConfig};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model folder {dir} has no {file}")]
    MissingFile { dir: String, file: &'static str },
    #[error("cannot read the model file {path}: {detail}")]
    BadFile { path: String, detail: String },
    #[error("unsupported model: {what}")]
    Unsupported { what: String },
    #[error("cannot load the weights in {path}: {source}")]
    Weights {
        path: String,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// What the runner tells users about the model (manifest, logs, responses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub architecture: &'static str,
    pub dimensions: usize,
    pub max_seq_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
}

pub struct EmbeddingModel {
    pub embedder: Box<dyn Embedder>,
    pub tokenizer: TextTokenizer,
    pub info: ModelInfo,
}

/// Loads the BERT-family encoder in `dir` (a local folder: S3 models are fetched into the cache
/// first), once `architectures::identify` has named it.
pub fn load(dir: &Path, device: &Device) -> Result<EmbeddingModel, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::BadFile { path: dir.display().to_string(), detail: "no such folder".into() });
    }
    let config = std::fs::read(dir.join("config.json"))
        .map_err(|_| ModelError::MissingFile { dir: dir.display().to_string(), file: "config.json" })?;
    bert::load(dir, &config, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_config_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(dir.path(), &Device::Cpu).err().expect("no config");
        assert!(err.to_string().contains("has no config.json"), "{err}");
        let err = load(&dir.path().join("missing"), &Device::Cpu).err().expect("no folder");
        assert!(err.to_string().contains("no such folder"), "{err}");
    }
}
