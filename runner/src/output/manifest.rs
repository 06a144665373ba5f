//! `manifest.json`: what a finished job was, for people and for the operator.

use serde::{Deserialize, Serialize};

use super::job::{Batching, ModelRecord};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub object: String,
    pub input: InputRecord,
    pub model: ManifestModel,
    pub outputs: Outputs,
    pub request_counts: RequestCounts,
    pub lines: u64,
    pub tokens: Tokens,
    pub shards: Vec<ShardRecord>,
    pub started: String,
    pub finished: String,
    pub runner_version: String,
    pub batching: Batching,
    /// True when the job was stopped (cancelled or out of time) and these are partial results.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Requests of the input that were never run (only in partial results).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unprocessed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputRecord {
    pub uri: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestModel {
    pub uri: String,
    #[serde(flatten)]
    pub record: ModelRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub results: String,
    pub errors: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRecord {
    pub index: u32,
    pub lines: u64,
    pub completed: u64,
    pub failed: u64,
    pub prompt_tokens: u64,
    pub started: String,
    pub finished: String,
}
