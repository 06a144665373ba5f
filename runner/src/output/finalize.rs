//! Merges every shard's chunks into `results.jsonl`, `errors.jsonl` and `manifest.json`.
//!
//! Guarantees: output follows input order; every request appears once (a repeated custom_id
//! keeps its first occurrence, later ones become `duplicate_custom_id` errors); error line
//! numbers count from the start of the whole input. `manifest.json` is written last, so its
//! presence means the job is complete. Memory holds one chunk and 16 bytes per custom_id.

use std::collections::HashMap;

use barge_api::{Counts, ShardId};
use bytes::Bytes;

use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::chunk::{self, Entry, JOB_KEY};
use super::job::JobRecord;
use super::manifest::{InputRecord, Manifest, ManifestModel, Outputs, RequestCounts, ShardRecord, Tokens};
use super::record::write_error;
use super::{ERRORS, MANIFEST, RESULTS};
use crate::input::ErrorCode;
use crate::storage::{ObjectStore, ObjectWriter, StorageError};

/// Flush merged output to storage in pieces of about this size.
const FLUSH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{uri} holds no job (no _barge/job.json): nothing to finalize")]
    NoJob { uri: String },
    #[error("{uri} is damaged: {detail}")]
    Damaged { uri: String, detail: String },
    #[error("the job at {uri} has {actual} shards, not {asked}")]
    ShardCount { uri: String, actual: u32, asked: u32 },
    #[error("shard {shard} is incomplete: {detail}")]
    Incomplete { shard: ShardId, detail: String },
}

pub async fn read_job(store: &dyn ObjectStore) -> Result<Option<JobRecord>, FinalizeError> {
    let Some(bytes) = store.get(JOB_KEY).await? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| FinalizeError::Damaged { uri: store.uri(JOB_KEY), detail: e.to_string() })
}

pub async fn read_manifest(store: &dyn ObjectStore) -> Result<Option<Manifest>, FinalizeError> {
    let Some(bytes) = store.get(MANIFEST).await? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| FinalizeError::Damaged { uri: store.uri(MANIFEST), detail: e.to_string() })
}

/// Checks that every shard finished the same job and returns their checkpoints in order.
async fn finished_shards(
    store: &dyn ObjectStore,
    job: &JobRecord,
    shards: u32,
) -> Result<Vec<Checkpoint>, FinalizeError> {
    if job.spec.shards != shards {
        return Err(FinalizeError::ShardCount { uri: store.uri(""), actual: job.spec.shards, asked: shards });
    }
    let fingerprint = job.spec.fingerprint();
    let mut out = Vec::with_capacity(shards as usize);
    for index in 0..shards {
        let shard = ShardId { index, count: shards };
        let cp = checkpoint::load(store, shard).await?.ok_or_else(|| FinalizeError::Incomplete {
            shard,
            detail: "it has no checkpoint (never ran)".into(),
        })?;
        if cp.job != fingerprint {
            return Err(FinalizeError::Incomplete {
                shard,
                detail: "its checkpoint belongs to another job".into(),
            });
        }
        if !cp.done {
            return Err(FinalizeError::Incomplete {
                shard,
                detail: format!("{} lines done so far, not finished", cp.counts.lines),
            });
        }
        out.push(cp);
    }
    Ok(out)
}

struct Merger {
    results: Box<dyn ObjectWriter>,
    errors: Box<dyn ObjectWriter>,
    results_buf: Vec<u8>,
    errors_buf: Vec<u8>,
    /// custom_id hash → global line of its first occurrence.
    seen: HashMap<u128, u64>,
    completed: u64,
    failed: u64,
}

impl Merger {
    async fn flush(&mut self, force: bool) -> Result<(), StorageError> {
        if force || self.results_buf.len() >= FLUSH_BYTES {
            let data = Bytes::from(std::mem::take(&mut self.results_buf));
            self.results.write(data).await?;
        }
        if force || self.errors_buf.len() >= FLUSH_BYTES {
            let data = Bytes::from(std::mem::take(&mut self.errors_buf));
            self.errors.write(data).await?;
        }
        Ok(())
    }

    /// Returns whether this custom_id is the first of its kind.
    fn first_time(&mut self, custom_id: &str, line: u64) -> Result<(), u64> {
        let key = xxhash_rust::xxh3::xxh3_128(custom_id.as_bytes());
        match self.seen.get(&key) {
            Some(&first) => Err(first),
            None => {
                self.seen.insert(key, line);
                Ok(())
            }
        }
    }

    fn merge_chunk(&mut self, data: &[u8], line_offset: u64, uri: &str) -> Result<(), FinalizeError> {
        for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let entry = chunk::parse(raw)
                .map_err(|e| FinalizeError::Damaged { uri: uri.to_string(), detail: e.to_string() })?;
            match entry {
                Entry::Result { line, custom_id, record } => {
                    let line = line + line_offset;
                    match self.first_time(&custom_id, line) {
                        Ok(()) => {
                            self.results_buf.extend_from_slice(record);
                            self.results_buf.push(b'\n');
                            self.completed += 1;
                        }
                        Err(first) => {
                            let msg = format!("`custom_id` {custom_id:?} repeats the one on line {first}");
                            let code = ErrorCode::DuplicateCustomId.as_str();
                            write_error(&mut self.errors_buf, Some(&custom_id), code, &msg, line);
                            self.failed += 1;
                        }
                    }
                }
                Entry::Error { line, custom_id, error } => {
                    let line = line + line_offset;
                    if let Some(id) = &custom_id {
                        let _ = self.first_time(id, line);
                    }
                    write_error(
                        &mut self.errors_buf,
                        custom_id.as_deref(),
                        &error.code,
                        &error.message,
                        line,
                    );
                    self.failed += 1;
                }
            }
        }
        Ok(())
    }
}

/// Merges the job in `store` (its output folder) made of `shards` shards.
pub async fn finalize(store: &dyn ObjectStore, shards: u32) -> Result<Manifest, FinalizeError> {
    let job = read_job(store).await?.ok_or_else(|| FinalizeError::NoJob { uri: store.uri("") })?;
    let checkpoints = finished_shards(store, &job, shards).await?;
    let mut merger = Merger {
        results: store.create(RESULTS).await?,
        errors: store.create(ERRORS).await?,
        results_buf: Vec::new(),
        errors_buf: Vec::new(),
        seen: HashMap::new(),
        completed: 0,
        failed: 0,
    };
    let merged = merge_all(store, &checkpoints, &mut merger).await;
    if let Err(e) = merged {
        merger.results.abort().await;
        merger.errors.abort().await;
        return Err(e);
    }
    let Merger { results, errors, completed, failed, .. } = merger;
    results.finish().await?;
    errors.finish().await?;

    let mut totals = Counts::default();
    for cp in &checkpoints {
        totals.add(&cp.counts);
    }
    let now = crate::clock::now_rfc3339();
    let manifest = Manifest {
        object: "barge.batch_manifest".into(),
        input: InputRecord {
            uri: job.spec.input.clone(),
            size: job.spec.input_size,
            etag: job.spec.input_etag.clone(),
        },
        model: ManifestModel { uri: job.spec.model.clone(), record: job.model.clone() },
        outputs: Outputs { results: store.uri(RESULTS), errors: store.uri(ERRORS) },
        request_counts: RequestCounts { total: completed + failed, completed, failed },
        lines: totals.lines,
        tokens: Tokens {
            prompt: totals.prompt_tokens,
            completion: totals.completion_tokens,
            total: totals.prompt_tokens + totals.completion_tokens,
        },
        shards: checkpoints
            .iter()
            .map(|cp| ShardRecord {
                index: cp.shard.index,
                lines: cp.counts.lines,
                completed: cp.counts.completed,
                failed: cp.counts.failed,
                prompt_tokens: cp.counts.prompt_tokens,
                started: cp.started.clone(),
                finished: cp.updated.clone(),
            })
            .collect(),
        started: checkpoints.iter().map(|c| c.started.clone()).min().unwrap_or_else(|| now.clone()),
        finished: now,
        runner_version: job.runner_version.clone(),
        batching: job.batching.clone(),
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("serialising plain data cannot fail");
    store.put(MANIFEST, Bytes::from(body)).await?;
    Ok(manifest)
}

async fn merge_all(
    store: &dyn ObjectStore,
    checkpoints: &[Checkpoint],
    merger: &mut Merger,
) -> Result<(), FinalizeError> {
    let mut line_offset = 0;
    for cp in checkpoints {
        for n in 0..cp.chunks {
            let key = chunk::chunk_key(cp.shard, n);
            let data = store.get(&key).await?.ok_or_else(|| FinalizeError::Damaged {
                uri: store.uri(&key),
                detail: "a chunk the checkpoint counts is missing".into(),
            })?;
            merger.merge_chunk(&data, line_offset, &store.uri(&key))?;
            merger.flush(false).await?;
        }
        line_offset += cp.counts.lines;
    }
    merger.flush(true).await?;
    Ok(())
}
