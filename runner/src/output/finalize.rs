//! Merges every shard's chunks into `results.jsonl`, `errors.jsonl` and `manifest.json`.
//!
//! Guarantees: output follows input order; every request appears once (a repeated custom_id
//! keeps its first occurrence, later ones become `duplicate_custom_id` errors); error line
//! numbers count from the start of the whole input. `manifest.json` is written last, so its
//! presence means the job is complete. Memory holds one chunk and 16 bytes per custom_id.

use std::collections::HashMap;
use std::sync::Arc;

use barge_api::{Counts, ShardId};
use bytes::Bytes;

use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::chunk::{self, Entry, JOB_KEY};
use super::job::JobRecord;
use super::manifest::{InputRecord, Manifest, ManifestModel, Outputs, RequestCounts, ShardRecord, Tokens};
use super::record::write_error;
use super::{ERRORS, MANIFEST, RESULTS};
use crate::input::lines::{LineBody, LineReader};
use crate::input::{ErrorCode, shard_range};
use crate::storage::{ObjectStore, ObjectWriter, StorageError};

/// The job's input, which a partial finalize reads to count the requests that never ran.
pub struct InputAccess {
    pub store: Arc<dyn ObjectStore>,
    pub key: String,
}

/// Longest line a partial finalize steps over while counting; longer ones still count.
const COUNT_MAX_LINE: usize = 8 * 1024 * 1024;

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
    partial: bool,
) -> Result<Vec<Checkpoint>, FinalizeError> {
    if job.spec.shards != shards {
        return Err(FinalizeError::ShardCount { uri: store.uri(""), actual: job.spec.shards, asked: shards });
    }
    let fingerprint = job.spec.fingerprint();
    let mut out = Vec::with_capacity(shards as usize);
    for index in 0..shards {
        let shard = ShardId { index, count: shards };
        let cp = match checkpoint::load(store, shard).await? {
            Some(cp) => cp,
            None if partial => Checkpoint {
                version: checkpoint::FORMAT_VERSION,
                job: fingerprint.clone(),
                shard,
                chunks: 0,
                next_offset: shard_range(job.spec.input_size, shard).0,
                counts: Counts::default(),
                done: false,
                started: crate::clock::now_rfc3339(),
                updated: crate::clock::now_rfc3339(),
                epoch: 0,
                owner: String::new(),
                segments: Vec::new(),
                version_tag: None,
            },
            None => {
                return Err(FinalizeError::Incomplete {
                    shard,
                    detail: "it has no checkpoint (never ran)".into(),
                });
            }
        };
        if cp.job != fingerprint {
            return Err(FinalizeError::Incomplete {
                shard,
                detail: "its checkpoint belongs to another job".into(),
            });
        }
        if !cp.done && !partial {
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

    fn merge_chunk(
        &mut self,
        data: &[u8],
        line_offset: u64,
        uri: &str,
        cursor: &mut Cursor,
    ) -> Result<(), FinalizeError> {
        for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let entry = chunk::parse(raw)
                .map_err(|e| FinalizeError::Damaged { uri: uri.to_string(), detail: e.to_string() })?;
            let local = match &entry {
                Entry::Result { line, .. } | Entry::Error { line, .. } => *line,
            };
            cursor.advance(local, uri)?;
            match entry {
                Entry::Result { line, custom_id, record, failed } => {
                    let line = line + line_offset;
                    match self.first_time(&custom_id, line) {
                        Ok(()) => {
                            self.results_buf.extend_from_slice(record);
                            self.results_buf.push(b'\n');
                            if failed {
                                self.failed += 1;
                            } else {
                                self.completed += 1;
                            }
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
    finalize_with(store, shards, None).await
}

/// Merges what the shards finished so far, for a job that was stopped: unfinished shards
/// contribute their checkpointed chunks, and the rest of their input is counted (read, not run)
/// as `unprocessed`.
pub async fn finalize_partial(
    store: &dyn ObjectStore,
    shards: u32,
    input: InputAccess,
) -> Result<Manifest, FinalizeError> {
    finalize_with(store, shards, Some(input)).await
}

/// Lines left in a shard after its checkpoint: (all lines, non-blank lines = requests).
async fn count_rest(
    input: &InputAccess,
    job: &JobRecord,
    cp: &Checkpoint,
) -> Result<(u64, u64), FinalizeError> {
    let range = shard_range(job.spec.input_size, cp.shard);
    // The version the job ran on: a file replaced since would be miscounted, so it is refused.
    let version = Some(job.spec.input_etag.as_str()).filter(|e| !e.is_empty());
    let mut reader = if cp.chunks == 0 && cp.counts.lines == 0 {
        LineReader::open_shard(input.store.clone(), &input.key, version, range, COUNT_MAX_LINE).await?
    } else {
        LineReader::resume(
            input.store.clone(),
            &input.key,
            version,
            cp.next_offset,
            range.1,
            1,
            COUNT_MAX_LINE,
        )
        .await?
    };
    let (mut lines, mut requests) = (0, 0);
    while let Some(line) = reader.next_line().await? {
        lines += 1;
        if !matches!(line.body, LineBody::Blank) {
            requests += 1;
        }
    }
    Ok((lines, requests))
}

async fn finalize_with(
    store: &dyn ObjectStore,
    shards: u32,
    input: Option<InputAccess>,
) -> Result<Manifest, FinalizeError> {
    let job = read_job(store).await?.ok_or_else(|| FinalizeError::NoJob { uri: store.uri("") })?;
    let checkpoints = finished_shards(store, &job, shards, input.is_some()).await?;
    // Lines each shard never read: they still shift the global line numbers of later shards.
    let mut unread = vec![0u64; checkpoints.len()];
    let mut unprocessed = 0;
    if let Some(input) = &input {
        for (i, cp) in checkpoints.iter().enumerate() {
            if !cp.done {
                let (lines, requests) = count_rest(input, &job, cp).await?;
                unread[i] = lines;
                unprocessed += requests;
            }
        }
    }
    let mut merger = Merger {
        results: store.create(RESULTS).await?,
        errors: store.create(ERRORS).await?,
        results_buf: Vec::new(),
        errors_buf: Vec::new(),
        seen: HashMap::new(),
        completed: 0,
        failed: 0,
    };
    let merged = merge_all(store, &checkpoints, &unread, &mut merger).await;
    if let Err(e) = merged {
        merger.results.abort().await;
        merger.errors.abort().await;
        return Err(e);
    }
    let Merger { results, errors, completed, failed, .. } = merger;
    if let Err(e) = results.finish().await {
        errors.abort().await;
        return Err(e.into());
    }
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
        partial: input.is_some(),
        unprocessed,
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("serialising plain data cannot fail");
    store.put(MANIFEST, Bytes::from(body)).await?;
    Ok(manifest)
}

/// Where a shard's merge has got to: its records must come in strictly increasing line order,
/// within the lines its checkpoint counts (an overlap or a stray chunk breaks that).
struct Cursor {
    last: u64,
    entries: u64,
    lines: u64,
}

impl Cursor {
    fn advance(&mut self, line: u64, uri: &str) -> Result<(), FinalizeError> {
        if line <= self.last || line > self.lines {
            return Err(FinalizeError::Damaged {
                uri: uri.to_string(),
                detail: format!(
                    "a record for line {line} comes after line {} (the shard counts {} lines): chunks overlap or are out of place",
                    self.last, self.lines
                ),
            });
        }
        self.last = line;
        self.entries += 1;
        Ok(())
    }
}

async fn merge_all(
    store: &dyn ObjectStore,
    checkpoints: &[Checkpoint],
    unread: &[u64],
    merger: &mut Merger,
) -> Result<(), FinalizeError> {
    let mut line_offset = 0;
    for (cp, unread) in checkpoints.iter().zip(unread) {
        let mut cursor = Cursor { last: 0, entries: 0, lines: cp.counts.lines };
        for n in 0..cp.chunks {
            let key = chunk::chunk_key(cp.shard, n, cp.epoch_of(n));
            let data = store.get(&key).await?.ok_or_else(|| FinalizeError::Damaged {
                uri: store.uri(&key),
                detail: "a chunk the checkpoint counts is missing".into(),
            })?;
            merger.merge_chunk(&data, line_offset, &store.uri(&key), &mut cursor)?;
            merger.flush(false).await?;
        }
        // Every request the checkpoint counts has exactly one entry: none lost, none twice.
        let counted = cp.counts.completed + cp.counts.failed;
        if cursor.entries != counted {
            return Err(FinalizeError::Damaged {
                uri: store.uri(&chunk::shard_dir(cp.shard)),
                detail: format!(
                    "the chunks of shard {} hold {} records where its checkpoint counts {counted}",
                    cp.shard, cursor.entries
                ),
            });
        }
        line_offset += cp.counts.lines + unread;
    }
    merger.flush(true).await?;
    Ok(())
}
