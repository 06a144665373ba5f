//! One shard's run, set up and resumed: the device, the stores, the input's version, the model
//! (fetched and loaded), the output's claim and the shard's checkpoint; then the task the model
//! calls for (`tasks::embed` or `tasks::generate`) over the stages (`stages.rs`), and the merge
//! when the run is the only shard. This is the one file that names both the tasks and the models.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use barge_api::{Counts, ShardId};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::architectures::{self, Kind, Loaded};
use crate::backend::{Embedder, NullEmbedder};
use crate::decoder::engine::EngineConfig;
use crate::device::{DeviceChoice, DeviceError};
use crate::input::lines::LineReader;
use crate::input::shard_range;
use crate::location::Location;
use crate::metrics::Metrics;
use crate::model_source::{self, FetchError};
use crate::models::ModelError;
use crate::output::checkpoint::{self, Checkpoint, CheckpointError, FORMAT_VERSION};
use crate::output::chunk::{self, CLAIM_KEY, JOB_KEY};
use crate::output::finalize::{self, FinalizeError};
use crate::output::job::{Batching, JobRecord, JobSpec, ModelRecord};
use crate::output::manifest::Manifest;
use crate::output::{ERRORS, MANIFEST, RESULTS, WORK_DIR};
use crate::progress::{self, ProgressState};
use crate::shutdown::Stop;
use crate::stages::{StageError, Stages, panic_message};
use crate::storage::{self, Condition, ObjectStore, S3Options, StorageError};
use crate::tasks;
use crate::types::Format;

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
    Stage(#[from] StageError),
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
pub async fn run_shard(cfg: RunConfig, stop: Stop) -> Result<RunSummary, RunError> {
    // First: a GPU that was asked for and is not there fails the run before any download.
    let device = crate::device::select(cfg.device)?;
    let stores = open_stores(&cfg).await?;
    let input_meta = stores
        .input
        .head(&stores.input_key)
        .await?
        .ok_or_else(|| RunError::InputMissing { uri: cfg.input.to_string() })?;
    let resolved = model_source::resolve(&cfg.model, &stores.s3, &cfg.cache_dir).await?;
    let architecture = architectures::identify(&resolved.dir)?;
    let decoder = architecture.kind == Kind::Decoder;
    let format = if decoder {
        Some(match cfg.format {
            Some(f) => f,
            None => tasks::generate::detect_format(stores.input.as_ref(), &stores.input_key).await?,
        })
    } else if cfg.format == Some(Format::Anthropic) {
        return Err(RunError::FormatNeedsDecoder { model: cfg.model.to_string() });
    } else {
        None
    };
    // Safetensors weights always run in f32, whatever the flag says.
    let kernels = decoder.then(|| {
        let used = if resolved.dir.is_file() { cfg.kernels } else { crate::decoder::Kernels::F32 };
        used.as_str().to_string()
    });
    let spec = JobSpec {
        format,
        input: cfg.input.to_string(),
        input_size: input_meta.size,
        input_etag: input_meta.etag.clone(),
        model: cfg.model.to_string(),
        model_etag: resolved.etag.clone(),
        shards: cfg.shard.count,
        defaults: cfg.defaults.clone(),
        kernels,
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
    let loaded = tokio::task::spawn_blocking(move || architecture.load(&model_dir, &device, kernels))
        .await
        .map_err(|e| StageError::Panicked {
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
            kernels: spec.kernels.clone(),
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
            let ctx = Arc::new(tasks::embed::Prep {
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
            tasks::embed::run(&stages, ctx, embedder, reader, out, &mut cp, bar.as_ref()).await?
        }
        Loaded::Decoder(model) => {
            let format = spec.format.unwrap_or(Format::OpenAi);
            let settings = tasks::generate::Settings {
                format,
                defaults: cfg.defaults.clone(),
                max_line_bytes: cfg.max_line_bytes,
                engine: cfg.generation.clone(),
            };
            tasks::generate::run(&stages, *model, settings, reader, out, &mut cp, bar.as_ref()).await?
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
