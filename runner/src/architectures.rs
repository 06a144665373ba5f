//! The one table of the model architectures the runner serves: how a model names its
//! architecture (`config.json`'s `model_type`, or a GGUF's `general.architecture`), what kind of
//! model it is, which loader builds it, and what verifies it. `run.rs` identifies a model here and
//! loads it through its row; nothing else lists architectures. Adding a family is its loader,
//! one row here and one test file (`docs/architecture.md`).

use std::path::Path;

use candle_core::Device;

use crate::decoder::{self, DecoderModel, Kernels};
use crate::models::{self, EmbeddingModel, ModelError};

/// Where a model names its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// `model_type` in a folder's `config.json`.
    ModelType,
    /// `general.architecture` in a GGUF file.
    Gguf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serves `/v1/embeddings`.
    Encoder,
    /// Serves `/v1/chat/completions`, `/v1/completions` and Anthropic's messages.
    Decoder,
}

pub enum Loaded {
    Embedding(Box<EmbeddingModel>),
    Decoder(Box<DecoderModel>),
}

type Loader = fn(&Path, &Device, Kernels) -> Result<Loaded, ModelError>;

pub struct Architecture {
    pub name: &'static str,
    pub named: Named,
    pub kind: Kind,
    /// What checks it, against which reference.
    pub verified: &'static str,
    load: Loader,
}

impl Architecture {
    pub fn load(&self, path: &Path, device: &Device, kernels: Kernels) -> Result<Loaded, ModelError> {
        (self.load)(path, device, kernels)
    }
}

fn encoder(path: &Path, device: &Device, _: Kernels) -> Result<Loaded, ModelError> {
    Ok(Loaded::Embedding(Box::new(models::load(path, device)?)))
}

fn llama_family(path: &Path, device: &Device, kernels: Kernels) -> Result<Loaded, ModelError> {
    Ok(Loaded::Decoder(Box::new(decoder::load(path, device, kernels)?)))
}

pub static TABLE: [Architecture; 6] = [
    Architecture {
        name: "bert",
        named: Named::ModelType,
        kind: Kind::Encoder,
        verified: "all-MiniLM-L6-v2 against sentence-transformers (runner/tests/e2e)",
        load: encoder,
    },
    Architecture {
        name: "llama",
        named: Named::ModelType,
        kind: Kind::Decoder,
        verified: "a folder made from the SmolLM2 GGUF against llama.cpp's greedy tokens (runner/tests/decoder)",
        load: llama_family,
    },
    Architecture {
        name: "mistral",
        named: Named::ModelType,
        kind: Kind::Decoder,
        verified: "the llama code path; no Mistral weights are reachable here",
        load: llama_family,
    },
    Architecture {
        name: "llama",
        named: Named::Gguf,
        kind: Kind::Decoder,
        verified: "SmolLM2-135M against llama.cpp's logits, bit for bit (runner/tests/decoder)",
        load: llama_family,
    },
    Architecture {
        name: "mistral",
        named: Named::Gguf,
        kind: Kind::Decoder,
        verified: "the llama code path; no Mistral weights are reachable here",
        load: llama_family,
    },
    Architecture {
        name: "gemma3",
        named: Named::Gguf,
        kind: Kind::Decoder,
        verified: "Gemma 3 against llama.cpp's logits and greedy tokens (runner/tests/decoder)",
        load: llama_family,
    },
];

fn supported(named: Named) -> String {
    TABLE.iter().filter(|a| a.named == named).map(|a| a.name).collect::<Vec<_>>().join(", ")
}

fn find(named: Named, name: &str) -> Option<&'static Architecture> {
    TABLE.iter().find(|a| a.named == named && a.name == name)
}

/// The table's row for the model at `path` (a GGUF file, or a folder with `config.json`), or an
/// error naming what the model says it is and what is served.
pub fn identify(path: &Path) -> Result<&'static Architecture, ModelError> {
    if path.is_file() {
        if path.extension().is_none_or(|e| e != "gguf") {
            return Err(ModelError::Unsupported {
                what: format!(
                    "{} is a file but not a GGUF; a model is a GGUF file or a folder with config.json",
                    path.display()
                ),
            });
        }
        let arch = decoder::gguf::Gguf::open(path)?.architecture()?;
        return find(Named::Gguf, &arch).ok_or_else(|| ModelError::Unsupported {
            what: format!(
                "GGUF architecture `{arch}` in {} (supported: {})",
                path.display(),
                supported(Named::Gguf)
            ),
        });
    }
    if !path.is_dir() {
        return Err(ModelError::BadFile {
            path: path.display().to_string(),
            detail: "no such folder".into(),
        });
    }
    let config_path = path.join("config.json");
    let config = std::fs::read(&config_path)
        .map_err(|_| ModelError::MissingFile { dir: path.display().to_string(), file: "config.json" })?;
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| ModelError::BadFile {
        path: config_path.display().to_string(),
        detail: e.to_string(),
    })?;
    let model_type = config["model_type"].as_str();
    model_type.and_then(|t| find(Named::ModelType, t)).ok_or_else(|| {
        let classes: Vec<&str> =
            config["architectures"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        ModelError::Unsupported {
            what: format!(
                "architecture `{}` ({}) in {}; supported: {}",
                model_type.unwrap_or("<no model_type>"),
                classes.join(", "),
                config_path.display(),
                supported(Named::ModelType)
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{self, Value};

    #[test]
    fn each_name_is_served_once_per_source() {
        for a in &TABLE {
            assert_eq!(
                TABLE.iter().filter(|b| b.named == a.named && b.name == a.name).count(),
                1,
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn folders_are_identified_by_model_type_and_others_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"bert"}"#).expect("write");
        let a = identify(dir.path()).expect("bert is served");
        assert_eq!((a.name, a.kind), ("bert", Kind::Encoder));
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"t5","architectures":["T5Model"]}"#)
            .expect("write");
        let err = identify(dir.path()).err().expect("t5 is not served").to_string();
        assert!(err.contains("`t5` (T5Model)") && err.contains("supported: bert, llama, mistral"), "{err}");
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"qwen2"}"#).expect("write");
        assert!(identify(dir.path()).is_err(), "qwen2 is not served until its biases are");
    }

    #[test]
    fn an_unsupported_gguf_architecture_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("falcon.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        let arch = Value::String("falcon".into());
        gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).expect("write a GGUF");
        drop(file);
        let msg = identify(&path).err().expect("falcon is not served").to_string();
        assert!(msg.contains("`falcon`") && msg.contains("supported: llama, mistral, gemma3"), "{msg}");
        let other = dir.path().join("weights.bin");
        std::fs::write(&other, b"x").expect("write");
        assert!(identify(&other).err().expect("not a model").to_string().contains("not a GGUF"));
    }
}
