//! What identifies a job's output: the same input, model and shard layout may resume or share
//! an output folder; anything else is a different job.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The arguments that decide the content of the results. Batching and threads are left out:
/// they change speed, not answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// The request format of a generation job (`None` for embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::types::Format>,
    pub input: String,
    pub input_size: u64,
    pub input_etag: String,
    pub model: String,
    /// Changes when any model file changes.
    pub model_etag: String,
    pub shards: u32,
    pub defaults: Map<String, Value>,
    /// How a decoder multiplies its weights (`quantized` or `f32`): unlike batching or threads,
    /// this changes answers, so a resume with other kernels is another job. `None` for encoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<String>,
}

impl JobSpec {
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).expect("serialising plain data cannot fail");
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&json))
    }

    /// Names the fields that differ, for the error a user sees.
    pub fn differences(&self, other: &JobSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} was {b}, now {a}"));
            }
        };
        cmp("input", self.input.clone(), other.input.clone());
        cmp("input size", self.input_size.to_string(), other.input_size.to_string());
        cmp("input etag", self.input_etag.clone(), other.input_etag.clone());
        cmp("model", self.model.clone(), other.model.clone());
        cmp("model files", self.model_etag.clone(), other.model_etag.clone());
        cmp("shards", self.shards.to_string(), other.shards.to_string());
        let fmt = |f: Option<crate::types::Format>| f.map_or("none", |f| f.as_str()).to_string();
        cmp("format", fmt(self.format), fmt(other.format));
        let kernels = |k: &Option<String>| k.clone().unwrap_or_else(|| "none".into());
        cmp("kernels", kernels(&self.kernels), kernels(&other.kernels));
        cmp(
            "defaults",
            Value::Object(self.defaults.clone()).to_string(),
            Value::Object(other.defaults.clone()).to_string(),
        );
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    pub name: String,
    pub architecture: String,
    pub dimensions: usize,
    pub max_seq_len: usize,
    pub files: Vec<FileDigest>,
    /// A decoder's kernels, as the job ran them (see [`JobSpec::kernels`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub window: usize,
}

/// `_barge/job.json`: the spec plus what the manifest reports about the model and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub spec: JobSpec,
    pub model: ModelRecord,
    pub batching: Batching,
    pub runner_version: String,
}
