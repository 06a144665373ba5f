//! Reads a model folder, detects its architecture from its own files and loads it behind the
//! backend traits. Models depend on the backend; this module, above them, picks one.

pub mod bert;
#[cfg(feature = "openblas")]
mod blas;
pub mod cpu_ops;
pub mod pooling;

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

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

/// Just enough of `config.json` to pick an architecture.
#[derive(Deserialize)]
struct ArchitectureProbe {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

/// Loads the model in `dir` (a local folder: S3 models are fetched into the cache first).
pub fn load(dir: &Path, device: &Device) -> Result<EmbeddingModel, ModelError> {
    if dir.is_file() {
        let what = if dir.extension().is_some_and(|e| e == "gguf") {
            format!(
                "{} is a GGUF decoder; this runner serves embedding encoders (BERT family) so far",
                dir.display()
            )
        } else {
            format!(
                "{} is a file; a model is a folder with config.json, *.safetensors and tokenizer.json",
                dir.display()
            )
        };
        return Err(ModelError::Unsupported { what });
    }
    let config_path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(ModelError::BadFile { path: dir.display().to_string(), detail: "no such folder".into() });
    }
    let config = std::fs::read(&config_path)
        .map_err(|_| ModelError::MissingFile { dir: dir.display().to_string(), file: "config.json" })?;
    let probe: ArchitectureProbe = serde_json::from_slice(&config).map_err(|e| ModelError::BadFile {
        path: config_path.display().to_string(),
        detail: e.to_string(),
    })?;
    match probe.model_type.as_deref() {
        Some("bert") => bert::load(dir, &config, device),
        other => Err(ModelError::Unsupported {
            what: format!(
                "architecture `{}` ({}) in {}; supported: bert",
                other.unwrap_or("<no model_type>"),
                probe.architectures.join(", "),
                config_path.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_architectures_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"t5","architectures":["T5Model"]}"#)
            .expect("write");
        let err = load(dir.path(), &Device::Cpu).err().expect("t5 is unsupported");
        assert!(err.to_string().contains("`t5` (T5Model)"), "{err}");
    }

    #[test]
    fn a_folder_without_config_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(dir.path(), &Device::Cpu).err().expect("no config");
        assert!(err.to_string().contains("has no config.json"), "{err}");
        let err = load(&dir.path().join("missing"), &Device::Cpu).err().expect("no folder");
        assert!(err.to_string().contains("no such folder"), "{err}");
    }
}
