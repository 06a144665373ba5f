//! One shard's run: input lines → parse and tokenize → batched model → chunks and checkpoints.
//!
//! The stages run concurrently over bounded channels, one window of lines at a time: while the
//! model works on a window, the next one is parsed and tokenized, and the previous one is
//! written. Lines are length-sorted into batches inside a window, and every window is written in
//! input order, so a checkpoint after each window marks a clean line boundary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use barge_api::{Counts, ShardId};
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::{BackendError, Batch, Embedder, NullEmbedder, TextTokenizer};
use crate::batcher;
use crate::decoder::engine::EngineConfig;
use crate::device::{DeviceChoice, DeviceError};
use crate::input::generation::Format;
use crate::input::lines::{Line, LineBody, LineReader};
use crate::input::openai::{EmbeddingInput, EncodingFormat, parse_line};
use crate::input::{ErrorCode, LineError, shard_range};
use crate::location::Location;
use crate::metrics::Metrics;
use crate::model_source::{self, FetchError};
use crate::models::{self, ModelError};
use crate::output::checkpoint::{self, Checkpoint, CheckpointError, FORMAT_VERSION};
use crate::output::chunk::{self, CLAIM_KEY, JOB_KEY};
use crate::output::finalize::{self, FinalizeError};
use crate::output::job::{Batching, JobRecord, JobSpec, ModelRecord};
use crate::output::manifest::Manifest;
use crate::output::{ERRORS, MANIFEST, RESULTS, WORK_DIR, record};
use crate::progress::{self, ProgressState};
use crate::shutdown::Stop;
use crate::storage::{self, Condition, ObjectStore, S3Options, StorageError};

/// Everything a run needs, from the command line or the operator's work order.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub model: Location,
    /// The name results report as `model`; defaults to the model folder's name.
    pub model_name: Option<String>,
    pub input: Location,
    pub output: Location,
    pub shard: ShardId,
    /// Where inference runs; checked before anything else.
    pub device: DeviceChoice,
    pub batching: Batching,
    pub defaults: Map<String, Value>,
    pub max_line_bytes: usize,
    pub overwrite: bool,
    pub s3: S3Options,
    pub cache_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub progress_bar: bool,
    /// Benchmarks only: skip the model's forward pass and write zero vectors.
    pub null_model: bool,
    /// The input format; `None` decides from the input's first request line.
    pub format: Option<Format>,
    /// Continuous batching and memory settings for decoder models.
    pub generation: EngineConfig,
    /// How decoder models multiply quantized GGUF weights.
    pub kernels: crate::decoder::Kernels,
}

enum Loaded {
    Embedding(Box<models::EmbeddingModel>),
    Decoder(Box<crate::decoder::DecoderModel>),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "{stage} panicked ({message}): this is a bug in barge-runner; the checkpoint keeps what was written"
    )]
    Panicked { stage: &'static str, message: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the Anthropic format needs a chat model, and {model} is an embedding model")]
    FormatNeedsDecoder { model: String },
    #[error("the input {uri} does not exist")]
    InputMissing { uri: String },
    #[error("the input {uri} is not a single object (expected a JSONL file)")]
    InputNotAFile { uri: String },
    #[error("the output {uri} holds a different job ({differences}); rerun with --overwrite to replace it")]
    OtherJob { uri: String, differences: String },
    #[error("runners of different jobs keep replacing each other's claim on {uri}; run one job per output")]
    ClaimContended { uri: String },
    #[error("cannot serve progress on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub shard: ShardId,
    /// Cumulative over every process that worked on the shard.
    pub counts: Counts,
    /// Done by this process alone.
    pub session: Counts,
    pub seconds: f64,
    /// False when a stop request ended the run early; a rerun resumes.
    pub done: bool,
    /// True when the output already held this finished job and nothing ran.
    pub already_done: bool,
    /// Set once everything is merged (unsharded runs, or `finalize`).
    pub manifest: Option<Manifest>,
}

struct Stores {
    input: Arc<dyn ObjectStore>,
    input_key: String,
    output: Arc<dyn ObjectStore>,
    s3: Option<aws_sdk_s3::Client>,
}

async fn open_stores(cfg: &RunConfig) -> Result<Stores, RunError> {
    let s3 = if [&cfg.model, &cfg.input, &cfg.output].iter().any(|l| l.is_s3()) {
        Some(storage::s3_client(&cfg.s3).await)
    } else {
        None
    };
    let (folder, input_key) =
        cfg.input.split_file().ok_or_else(|| RunError::InputNotAFile { uri: cfg.input.to_string() })?;
    Ok(Stores { input: storage::open(&folder, &s3), input_key, output: storage::open(&cfg.output, &s3), s3 })
}

fn model_name(cfg: &RunConfig) -> String {
    if let Some(name) = &cfg.model_name {
        return name.clone();
    }
    let text = cfg.model.to_string();
    let trimmed = text.trim_end_matches('/');
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    base.strip_suffix(".gguf").unwrap_or(base).to_string()
}

/// Runs one shard to its end (or to a stop request), then finalizes when it is the only shard.
pub async fn run(cfg: RunConfig, stop: Stop) -> Result<RunSummary, RunError> {
    // First: a GPU that was asked for and is not there fails the run before any download.
    let device = crate::device::select(cfg.device)?;
    let stores = open_stores(&cfg).await?;
    let input_meta = stores
        .input
        .head(&stores.input_key)
        .await?
        .ok_or_else(|| RunError::InputMissing { uri: cfg.input.to_string() })?;
    let resolved = model_source::resolve(&cfg.model, &stores.s3, &cfg.cache_dir).await?;
    let decoder = crate::decoder::is_decoder(&resolved.dir);
    let format = if decoder {
        Some(match cfg.format {
            Some(f) => f,
            None => crate::generation::detect_format(stores.input.as_ref(), &stores.input_key).await?,
        })
    } else if cfg.format == Some(Format::Anthropic) {
        return Err(RunError::FormatNeedsDecoder { model: cfg.model.to_string() });
    } else {
        None
    };
    let spec = JobSpec {
        format,
        input: cfg.input.to_string(),
        input_size: input_meta.size,
        input_etag: input_meta.etag.clone(),
        model: cfg.model.to_string(),
        model_etag: resolved.etag.clone(),
        shards: cfg.shard.count,
        defaults: cfg.defaults.clone(),
    };
    let out = stores.output.as_ref();

    // An existing output either is this job (resume, or nothing to do) or another one.
    if let Some(existing) = finalize::read_job(out).await? {
        let differences = spec.differences(&existing.spec);
        if !differences.is_empty() {
            if !cfg.overwrite {
                return Err(RunError::OtherJob { uri: out.uri(""), differences: differences.join("; ") });
            }
            clear_output(out, cfg.shard).await?;
        } else if cfg.overwrite {
            clear_output(out, cfg.shard).await?;
        } else if cfg.shard.count == 1
            && let Some(manifest) = finalize::read_manifest(out).await?
        {
            return Ok(already_done(cfg.shard, manifest_counts(&manifest), Some(manifest)));
        }
    } else if cfg.overwrite {
        clear_output(out, cfg.shard).await?;
    }
    claim_output(out, &spec, cfg.overwrite).await?;

    let fingerprint = spec.fingerprint();
    let resume = checkpoint::load(out, cfg.shard).await?.filter(|cp| cp.job == fingerprint);
    if let Some(cp) = &resume
        && cp.done
    {
        if cfg.shard.count == 1 {
            let manifest = finalize::finalize(out, 1).await?;
            return Ok(already_done(cfg.shard, cp.counts, Some(manifest)));
        }
        return Ok(already_done(cfg.shard, cp.counts, None));
    }

    let model_dir = resolved.dir.clone();
    let kernels = cfg.kernels;
    let load_started = Instant::now();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, ModelError> {
        if decoder {
            Ok(Loaded::Decoder(Box::new(crate::decoder::load(&model_dir, &device, kernels)?)))
        } else {
            Ok(Loaded::Embedding(Box::new(models::load(&model_dir, &device)?)))
        }
    })
    .await
    .map_err(|e| RunError::Panicked {
        stage: "loading the model",
        message: e.try_into_panic().map(|p| panic_message(&p)).unwrap_or_else(|e| e.to_string()),
    })??;
    let (architecture, dimensions, max_seq_len) = match &loaded {
        Loaded::Embedding(m) => (m.info.architecture.to_string(), m.info.dimensions, m.info.max_seq_len),
        Loaded::Decoder(m) => (m.architecture.clone(), 0, m.decoder.context_len()),
    };
    tracing::info!(
        architecture,
        dimensions,
        max_seq_len,
        seconds = load_started.elapsed().as_secs_f64(),
        "model loaded"
    );
    let name = model_name(&cfg);
    let job = JobRecord {
        spec: spec.clone(),
        model: ModelRecord {
            name: name.clone(),
            architecture,
            dimensions,
            max_seq_len,
            files: resolved.files.clone(),
        },
        batching: cfg.batching.clone(),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Written before any work, so a bucket that refuses writes fails the run at once.
    let body = serde_json::to_vec_pretty(&job).expect("serialising plain data cannot fail");
    out.put(JOB_KEY, Bytes::from(body)).await?;

    // Take the shard over. The checkpoint is read again: a runner this one replaces may have
    // gone on while the model loaded. The write of the new epoch is conditional on what was
    // read, so of two runners racing here one wins and the other stops (Fenced).
    let now = crate::clock::now_rfc3339();
    let fresh = |previous: Option<Checkpoint>| Checkpoint {
        version: FORMAT_VERSION,
        job: fingerprint.clone(),
        shard: cfg.shard,
        chunks: 0,
        next_offset: shard_range(input_meta.size, cfg.shard).0,
        counts: Counts::default(),
        done: false,
        started: now.clone(),
        updated: now.clone(),
        epoch: previous.as_ref().map_or(0, |p| p.epoch),
        owner: String::new(),
        segments: Vec::new(),
        version_tag: previous.and_then(|p| p.version_tag),
    };
    let mut cp = match checkpoint::load(out, cfg.shard).await? {
        Some(cp) if cp.job == fingerprint => cp,
        other => fresh(other),
    };
    drop(resume);
    if cp.done {
        // Another runner finished the shard while this one loaded the model.
        let manifest = match cfg.shard.count {
            1 => Some(finalize::finalize(out, 1).await?),
            _ => None,
        };
        return Ok(already_done(cfg.shard, cp.counts, manifest));
    }
    cp.take_over();
    checkpoint::save(out, &mut cp).await?;
    if cp.chunks > 0 {
        tracing::info!(shard = %cfg.shard, lines = cp.counts.lines, chunks = cp.chunks, "resuming after the last checkpoint");
    }

    let metrics = Arc::new(Metrics::new());
    let range = shard_range(input_meta.size, cfg.shard);
    let progress = Arc::new(ProgressState::new(cfg.shard, cp.counts, range, cp.next_offset));
    if let Some(addr) = cfg.listen {
        let bound = progress::serve(addr, progress.clone(), metrics.clone())
            .await
            .map_err(|source| RunError::Listen { addr, source })?;
        tracing::info!(%bound, "serving /progress and /metrics");
    }

    let reader = if cp.chunks == 0 && cp.counts.lines == 0 {
        LineReader::open_shard(
            stores.input.clone(),
            &stores.input_key,
            Some(&input_meta.etag),
            range,
            cfg.max_line_bytes,
        )
        .await?
    } else {
        LineReader::resume(
            stores.input.clone(),
            &stores.input_key,
            Some(&input_meta.etag),
            cp.next_offset,
            range.1,
            cp.counts.lines + 1,
            cfg.max_line_bytes,
        )
        .await?
    };

    let bar = progress_bar(cfg.progress_bar, range, cp.next_offset);
    let stages = Stages {
        model_name: Arc::from(name.as_str()),
        metrics,
        progress: progress.clone(),
        stop,
        window: cfg.batching.window,
        range_start: range.0,
    };
    let done = match loaded {
        Loaded::Embedding(model) => {
            let ctx = Arc::new(PrepareCtx {
                tokenizer: model.tokenizer,
                defaults: cfg.defaults.clone(),
                dimensions: model.info.dimensions,
                max_seq_len: model.info.max_seq_len,
                max_line_bytes: cfg.max_line_bytes,
                batching: cfg.batching.clone(),
            });
            let embedder: Box<dyn Embedder> = if cfg.null_model {
                tracing::warn!("--null-model: writing zero vectors instead of running the model");
                Box::new(NullEmbedder { dimensions: model.info.dimensions })
            } else {
                model.embedder
            };
            stages.run_embedder(ctx, embedder, reader, out, &mut cp, bar.as_ref()).await?
        }
        Loaded::Decoder(model) => {
            let format = spec.format.unwrap_or(Format::OpenAi);
            let settings = crate::generation::Settings {
                format,
                defaults: cfg.defaults.clone(),
                max_line_bytes: cfg.max_line_bytes,
                engine: cfg.generation.clone(),
            };
            crate::generation::run(&stages, *model, settings, reader, out, &mut cp, bar.as_ref()).await?
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut summary = RunSummary {
        shard: cfg.shard,
        counts: cp.counts,
        session: progress.session(),
        seconds: progress.elapsed_secs(),
        done,
        already_done: false,
        manifest: None,
    };
    if done {
        progress.set_done();
        if cfg.shard.count == 1 {
            summary.manifest = Some(finalize::finalize(out, 1).await?);
        }
    }
    Ok(summary)
}

fn already_done(shard: ShardId, counts: Counts, manifest: Option<Manifest>) -> RunSummary {
    RunSummary {
        shard,
        counts,
        session: Counts::default(),
        seconds: 0.0,
        done: true,
        already_done: true,
        manifest,
    }
}

pub fn manifest_counts(m: &Manifest) -> Counts {
    Counts {
        lines: m.lines,
        completed: m.request_counts.completed,
        failed: m.request_counts.failed,
        prompt_tokens: m.tokens.prompt,
        completion_tokens: m.tokens.completion,
    }
}

/// `--overwrite`: an unsharded run owns the whole output; a shard clears only its own work.
/// Claims the output for this job before anything is written there, with a write that only
/// one of many racing runners can win (`If-None-Match: *` on S3): the claim names the job's
/// spec, so the shards of one job all pass, and a runner of another job is refused at once
/// (`OtherJob`) — or, with `--overwrite`, takes the claim over from the version it read.
async fn claim_output(out: &dyn ObjectStore, spec: &JobSpec, overwrite: bool) -> Result<(), RunError> {
    let body = Bytes::from(serde_json::to_vec_pretty(spec).expect("serialising plain data cannot fail"));
    for _ in 0..5 {
        let existing = match out.put_if(CLAIM_KEY, body.clone(), Condition::Absent).await {
            Ok(_) => return Ok(()),
            Err(StorageError::Conflict { .. }) => match out.get_versioned(CLAIM_KEY).await? {
                Some(existing) => existing,
                None => continue, // removed in between (an overwrite): claim again
            },
            Err(e) => return Err(e.into()),
        };
        let differences = match serde_json::from_slice::<JobSpec>(&existing.body) {
            Ok(theirs) => spec.differences(&theirs),
            Err(e) => vec![format!("its claim {} is not one this runner reads ({e})", out.uri(CLAIM_KEY))],
        };
        if differences.is_empty() {
            return Ok(());
        }
        if !overwrite {
            return Err(RunError::OtherJob { uri: out.uri(""), differences: differences.join("; ") });
        }
        match out.put_if(CLAIM_KEY, body.clone(), Condition::Version(&existing.version)).await {
            Ok(_) => return Ok(()),
            Err(StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RunError::ClaimContended { uri: out.uri(CLAIM_KEY) })
}

async fn clear_output(out: &dyn ObjectStore, shard: ShardId) -> Result<(), StorageError> {
    if shard.count == 1 {
        out.delete_prefix(WORK_DIR).await?;
        for key in [RESULTS, ERRORS, MANIFEST] {
            out.delete(key).await?;
        }
    } else {
        out.delete_prefix(&chunk::shard_dir(shard)).await?;
        out.delete(MANIFEST).await?;
    }
    Ok(())
}

fn progress_bar(enabled: bool, (start, end): (u64, u64), at: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(end.saturating_sub(start));
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(at.saturating_sub(start));
    Some(bar)
}

/// What parsing and tokenizing need, shared with the preparing thread.
struct PrepareCtx {
    tokenizer: TextTokenizer,
    defaults: Map<String, Value>,
    dimensions: usize,
    max_seq_len: usize,
    max_line_bytes: usize,
    batching: Batching,
}

/// Lines read from the input, not yet parsed.
pub(crate) struct RawWindow {
    pub lines: Vec<Line>,
}

/// A finished window as one chunk: its bytes, its counts and where in the input it ends.
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub counts: Counts,
    pub end_offset: u64,
}

/// One request of a window, in input order.
enum Item {
    Failed {
        line: u64,
        error: LineError,
    },
    Embed {
        line: u64,
        custom_id: String,
        encoding: EncodingFormat,
        first_seq: usize,
        seqs: usize,
        tokens: u64,
    },
}

/// Parsed and tokenized, with the batches the model will run.
struct PreparedWindow {
    lines: u64,
    end_offset: u64,
    items: Vec<Item>,
    seqs: usize,
    batches: Vec<(Batch, Vec<usize>)>,
}

/// Embedded: `vectors` holds `seqs * dimensions` values in sequence order.
struct DoneWindow {
    prepared: PreparedWindow,
    vectors: Vec<f32>,
}

impl PrepareCtx {
    fn tokens_of(&self, input: &EmbeddingInput) -> Result<Vec<u32>, String> {
        match input {
            EmbeddingInput::Text(text) => self.tokenizer.encode(text),
            EmbeddingInput::Tokens(ids) => {
                let vocab = self.tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(format!("token id {bad} is outside the model's vocabulary of {vocab}"));
                }
                Ok(ids[..ids.len().min(self.max_seq_len)].to_vec())
            }
        }
    }

    fn prepare(&self, raw: RawWindow) -> PreparedWindow {
        let lines = raw.lines.len() as u64;
        let end_offset = raw.lines.last().map_or(0, |l| l.end);
        let mut items = Vec::new();
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for line in raw.lines {
            let number = line.number;
            let parsed = match line.body {
                LineBody::Blank => continue,
                LineBody::TooLong { len } => Err(crate::input::line_too_long(len, self.max_line_bytes)),
                LineBody::Text(bytes) => parse_line(&bytes, &self.defaults),
            };
            let req = match parsed {
                Ok(req) => req,
                Err(error) => {
                    items.push(Item::Failed { line: number, error });
                    continue;
                }
            };
            let known = Some(req.custom_id.clone());
            if let Some(d) = req.dimensions.filter(|&d| d != self.dimensions as u64) {
                let msg = format!(
                    "`dimensions` is {d}, but this model returns {} dimensions and cannot shorten them",
                    self.dimensions
                );
                let error = LineError::new(ErrorCode::UnsupportedDimensions, msg).with_custom_id(known);
                items.push(Item::Failed { line: number, error });
                continue;
            }
            let tokenized: Result<Vec<Vec<u32>>, String> =
                req.inputs.iter().map(|i| self.tokens_of(i)).collect();
            match tokenized {
                Ok(ids) => {
                    let tokens = ids.iter().map(|s| s.len() as u64).sum();
                    items.push(Item::Embed {
                        line: number,
                        custom_id: req.custom_id,
                        encoding: req.encoding,
                        first_seq: seqs.len(),
                        seqs: ids.len(),
                        tokens,
                    });
                    seqs.extend(ids);
                }
                Err(msg) => {
                    let error = LineError::new(ErrorCode::InvalidInput, msg).with_custom_id(known);
                    items.push(Item::Failed { line: number, error });
                }
            }
        }
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let plan = batcher::plan(&lengths, self.batching.max_batch_size, self.batching.max_batch_tokens);
        let batches = plan
            .into_iter()
            .map(|indices| {
                let mut batch = Batch::new();
                for &i in &indices {
                    batch.push(&seqs[i]);
                }
                (batch, indices)
            })
            .collect();
        PreparedWindow { lines, end_offset, items, seqs: seqs.len(), batches }
    }
}

pub(crate) struct Stages {
    pub(crate) model_name: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) progress: Arc<ProgressState>,
    pub(crate) stop: Stop,
    pub(crate) window: usize,
    /// The shard's first byte: the progress bar counts from there.
    pub(crate) range_start: u64,
}

/// Serializes a window's records into one chunk, in input order, with the window's counts.
fn encode_chunk(w: &DoneWindow, dims: usize, model: &str) -> Encoded {
    let mut out = Vec::with_capacity(w.prepared.seqs * dims * 12 + 256);
    let mut counts = Counts { lines: w.prepared.lines, ..Counts::default() };
    for item in &w.prepared.items {
        match item {
            Item::Failed { line, error } => {
                chunk::push_error(&mut out, *line, error);
                counts.failed += 1;
            }
            Item::Embed { line, custom_id, encoding, first_seq, seqs, tokens } => {
                let vectors: Vec<&[f32]> =
                    (*first_seq..first_seq + seqs).map(|s| &w.vectors[s * dims..(s + 1) * dims]).collect();
                chunk::begin_result(&mut out, *line, custom_id);
                record::write_embeddings(&mut out, custom_id, model, &vectors, *encoding, *tokens);
                counts.completed += 1;
                counts.prompt_tokens += tokens;
            }
        }
    }
    Encoded { bytes: out, counts, end_offset: w.prepared.end_offset }
}

impl Stages {
    /// The embedding path: the window's batches through the embedder, vectors out.
    async fn run_embedder(
        &self,
        ctx: Arc<PrepareCtx>,
        mut embedder: Box<dyn Embedder>,
        reader: LineReader,
        out: &dyn ObjectStore,
        cp: &mut Checkpoint,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<bool, RunError> {
        let dims = embedder.dimensions();
        let (stop, metrics) = (self.stop.clone(), self.metrics.clone());
        let model = move |mut prep_rx: mpsc::Receiver<PreparedWindow>, done_tx: mpsc::Sender<DoneWindow>| {
            while let Some(prepared) = prep_rx.blocking_recv() {
                let mut vectors = vec![0f32; prepared.seqs * dims];
                for (batch, indices) in &prepared.batches {
                    // Finish the batch in flight, then drop the rest of the window: it is re-read on resume.
                    if stop.requested() {
                        return Ok(());
                    }
                    let started = Instant::now();
                    let out = embedder.embed(batch)?;
                    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    metrics.batch_size.observe(batch.len() as f64);
                    metrics.batch_padded_tokens.observe(batch.padded_tokens() as f64);
                    for (row, &seq) in indices.iter().enumerate() {
                        vectors[seq * dims..(seq + 1) * dims]
                            .copy_from_slice(&out[row * dims..(row + 1) * dims]);
                    }
                }
                if done_tx.blocking_send(DoneWindow { prepared, vectors }).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        };
        let name = self.model_name.clone();
        let encode = Arc::new(move |done: DoneWindow| encode_chunk(&done, dims, &name));
        self.run(reader, out, cp, bar, move |raw| ctx.prepare(raw), model, encode).await
    }

    /// Runs the stages to the end of the shard or a stop request; returns whether the shard is
    /// done. `prepare` parses a window of lines, `model` turns prepared windows into finished
    /// ones (in input order), `encode` makes a finished window's chunk.
    #[allow(clippy::too_many_arguments)] // the three stage bodies are the point of this function
    pub(crate) async fn run<P, D>(
        &self,
        mut reader: LineReader,
        out: &dyn ObjectStore,
        cp: &mut Checkpoint,
        bar: Option<&indicatif::ProgressBar>,
        prepare: impl Fn(RawWindow) -> P + Send + 'static,
        model: impl FnOnce(mpsc::Receiver<P>, mpsc::Sender<D>) -> Result<(), BackendError> + Send + 'static,
        encode: Arc<dyn Fn(D) -> Encoded + Send + Sync>,
    ) -> Result<bool, RunError>
    where
        P: Send + 'static,
        D: Send + 'static,
    {
        // One window waits at each hand-off: the model never waits for input, memory stays bounded.
        let (raw_tx, mut raw_rx) = mpsc::channel::<RawWindow>(1);
        let (prep_tx, prep_rx) = mpsc::channel::<P>(1);
        let (done_tx, mut done_rx) = mpsc::channel::<D>(1);

        let window = self.window.max(1);
        let max_window_bytes = 64 * 1024 * 1024;
        let stop = self.stop.clone();
        let read = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                if stop.requested() {
                    return Ok::<_, StorageError>((false, sent));
                }
                let (mut lines, mut bytes) = (Vec::with_capacity(window), 0usize);
                let mut eof = false;
                while lines.len() < window && bytes < max_window_bytes {
                    match reader.next_line().await? {
                        Some(line) => {
                            if let LineBody::Text(t) = &line.body {
                                bytes += t.len();
                            }
                            lines.push(line);
                        }
                        None => {
                            eof = true;
                            break;
                        }
                    }
                }
                if !lines.is_empty() {
                    if raw_tx.send(RawWindow { lines }).await.is_err() {
                        return Ok((false, sent)); // a later stage stopped
                    }
                    sent += 1;
                }
                if eof {
                    return Ok((true, sent));
                }
            }
        });

        let prepare = std::thread::Builder::new()
            .name("prepare".into())
            .spawn(move || {
                while let Some(raw) = raw_rx.blocking_recv() {
                    if prep_tx.blocking_send(prepare(raw)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a thread");

        let model = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || model(prep_rx, done_tx))
            .expect("spawning a thread");

        let mut written = 0u64;
        let mut write_error = None;
        while let Some(done) = done_rx.recv().await {
            let encode = encode.clone();
            let encoded =
                tokio::task::spawn_blocking(move || encode(done)).await.expect("encoding does not panic");
            match self.write_window(encoded, out, cp, bar).await {
                Ok(()) => written += 1,
                Err(e) => {
                    // Stop the other stages; the checkpoint still marks the last good window.
                    self.stop.request();
                    write_error = Some(e);
                    break;
                }
            }
        }
        drop(done_rx);
        let model_result =
            tokio::task::spawn_blocking(move || model.join()).await.expect("joining does not panic");
        let prepare_result =
            tokio::task::spawn_blocking(move || prepare.join()).await.expect("joining does not panic");
        let read_result = read.await.expect("the reader does not panic");
        // A panicking stage is a bug, reported as one (exit 1, with its message), not as a stop
        // request: the input it would have ended is not "interrupted".
        if let Err(panic) = prepare_result {
            return Err(RunError::Panicked { stage: "request parsing", message: panic_message(&panic) });
        }
        if let Some(e) = write_error {
            return Err(e);
        }
        match model_result {
            Ok(result) => result?,
            Err(panic) => {
                return Err(RunError::Panicked { stage: "the model", message: panic_message(&panic) });
            }
        }
        let (eof, sent) = read_result?;
        let done = eof && sent == written;
        if done {
            cp.done = true;
            cp.updated = crate::clock::now_rfc3339();
            checkpoint::save(out, cp).await?;
        }
        Ok(done)
    }

    async fn write_window(
        &self,
        encoded: Encoded,
        out: &dyn ObjectStore,
        cp: &mut Checkpoint,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(), RunError> {
        let Encoded { bytes, counts, end_offset } = encoded;
        out.put(&chunk::chunk_key(cp.shard, cp.chunks, cp.epoch), Bytes::from(bytes)).await?;
        cp.chunks += 1;
        cp.next_offset = end_offset;
        cp.counts.add(&counts);
        cp.updated = crate::clock::now_rfc3339();
        checkpoint::save(out, cp).await?;
        self.progress.add(&counts, end_offset);
        self.metrics.requests.with_label_values(&["completed"]).inc_by(counts.completed);
        self.metrics.requests.with_label_values(&["failed"]).inc_by(counts.failed);
        self.metrics.prompt_tokens.inc_by(counts.prompt_tokens);
        self.metrics.completion_tokens.inc_by(counts.completion_tokens);
        if let Some(bar) = bar {
            bar.set_position(end_offset.saturating_sub(self.range_start));
            bar.set_message(format!("{} ok, {} failed", cp.counts.completed, cp.counts.failed));
        }
        tracing::debug!(chunk = cp.chunks - 1, lines = cp.counts.lines, "checkpoint written");
        Ok(())
    }
}

/// The text a panic carried, if it carried one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
