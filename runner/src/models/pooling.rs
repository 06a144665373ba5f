//! sentence-transformers' module files: how token states become one vector (pooling), whether
//! it is L2-normalised, and the maximum sequence length.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the token states, padding masked out.
    Mean,
    /// The first token's state ([CLS]).
    Cls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ModelError::BadFile { path: path.display().to_string(), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::BadFile { path: path.display().to_string(), detail: e.to_string() }),
    }
}

impl SentenceConfig {
    /// Reads `modules.json`, the pooling module's `config.json` and `sentence_bert_config.json`.
    /// A folder without them gets mean pooling without normalisation: a plain transformer.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let modules: Vec<Module> = read_json(&dir.join("modules.json"))?.unwrap_or_default();
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| m.path.clone())
            .or_else(|| dir.join("1_Pooling/config.json").exists().then(|| "1_Pooling".to_string()));
        let pooling = match pooling_dir {
            Some(sub) => {
                let path = dir.join(&sub).join("config.json");
                let file: PoolingFile = read_json(&path)?.ok_or_else(|| ModelError::BadFile {
                    path: path.display().to_string(),
                    detail: "missing".into(),
                })?;
                if file.pooling_mode_max_tokens || file.pooling_mode_mean_sqrt_len_tokens {
                    return Err(ModelError::Unsupported {
                        what: format!(
                            "pooling mode in {} (only mean and CLS pooling are supported)",
                            path.display()
                        ),
                    });
                }
                match (file.pooling_mode_mean_tokens, file.pooling_mode_cls_token) {
                    (true, false) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => {
                        return Err(ModelError::Unsupported {
                            what: format!(
                                "pooling in {}: exactly one of mean or CLS must be set",
                                path.display()
                            ),
                        });
                    }
                }
            }
            None => Pooling::Mean,
        };
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let sbert: Option<SentenceBertFile> = read_json(&dir.join("sentence_bert_config.json"))?;
        Ok(SentenceConfig {
            pooling,
            normalize,
            max_seq_length: sbert.as_ref().and_then(|s| s.max_seq_length),
            lowercase: sbert.is_some_and(|s| s.do_lower_case),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, body: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }

    #[test]
    fn reads_sentence_transformers_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        );
        write(dir.path(), "1_Pooling/config.json", r#"{"pooling_mode_cls_token": true}"#);
        write(dir.path(), "sentence_bert_config.json", r#"{"max_seq_length": 256, "do_lower_case": false}"#);
        let cfg = SentenceConfig::read(dir.path()).expect("reads");
        assert_eq!(
            cfg,
            SentenceConfig {
                pooling: Pooling::Cls,
                normalize: true,
                max_seq_length: Some(256),
                lowercase: false
            }
        );
    }

    #[test]
    fn a_plain_folder_means_mean_pooling_without_normalisation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SentenceConfig::read(dir.path()).expect("reads");
        assert_eq!((cfg.pooling, cfg.normalize, cfg.max_seq_length), (Pooling::Mean, false, None));
    }

    #[test]
    fn unsupported_pooling_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "1_Pooling/config.json", r#"{"pooling_mode_max_tokens": true}"#);
        let err = SentenceConfig::read(dir.path()).expect_err("max pooling");
        assert!(err.to_string().contains("pooling mode"), "{err}");
    }
}
