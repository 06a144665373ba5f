//! The generation task: request lines become prompts (chat template, tokenizer,
//! limits checked), the continuous-batching engine generates across window boundaries, and
//! finished windows leave in input order, so checkpoints still mark clean line boundaries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use barge_api::Counts;
use serde_json::{Map, Value};
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::backend::BackendError;
use crate::decoder::DecoderModel;
use crate::decoder::chat_template::ChatTemplate;
use crate::decoder::engine::{Engine, EngineConfig, GenRequest, GenResult, Refused};
use crate::decoder::sampling::SamplingParams;
use crate::decoder::vocab::Vocab;
use crate::input::generation::{self, GenerationRequest, Prompt};
use crate::input::lines::LineBody;
use crate::input::lines::LineReader;
use crate::input::{ErrorCode, LineError};
use crate::output::checkpoint::Checkpoint;
use crate::output::chunk;
use crate::output::generation_record::{self, Generated};
use crate::stages::{Encoded, RawWindow, StageError, Stages};
use crate::storage::{ObjectStore, StorageError};
use crate::types::{Endpoint, Format};

/// How far into the input `--format auto` looks for its first request line.
const SNIFF_BYTES: u64 = 1024 * 1024;

pub struct Settings {
    pub format: Format,
    pub defaults: Map<String, Value>,
    pub max_line_bytes: usize,
    pub engine: EngineConfig,
}

/// `--format auto`: the format of the first line that is either, in the input's first MiB.
/// Every shard reads the same bytes, so all shards decide alike.
pub async fn detect_format(store: &dyn ObjectStore, key: &str) -> Result<Format, StorageError> {
    use tokio::io::AsyncReadExt;
    let reader = store.read_from(key, 0).await?;
    let mut head = Vec::new();
    reader.take(SNIFF_BYTES).read_to_end(&mut head).await.map_err(|source| StorageError::Io {
        op: "read",
        uri: store.uri(key),
        source,
    })?;
    Ok(head.split(|&b| b == b'\n').find_map(generation::sniff).unwrap_or(Format::OpenAi))
}

/// What preparing needs, shared with the preparing thread.
struct Prep {
    vocab: Arc<Vocab>,
    template: Option<ChatTemplate>,
    format: Format,
    defaults: Map<String, Value>,
    max_line_bytes: usize,
    context: usize,
    kv_tokens: usize,
    kv_budget_mib: usize,
}

enum Item {
    Failed {
        line: u64,
        error: LineError,
    },
    Run {
        line: u64,
        custom_id: String,
        endpoint: Endpoint,
        request: Option<GenRequest>,
        result: Option<GenResult>,
    },
}

struct GenWindow {
    lines: u64,
    end_offset: u64,
    items: Vec<Item>,
}

impl Prep {
    fn prepare(&self, raw: RawWindow) -> GenWindow {
        let lines = raw.lines.len() as u64;
        let end_offset = raw.lines.last().map_or(0, |l| l.end);
        let mut items = Vec::new();
        for line in raw.lines {
            let number = line.number;
            let parsed = match line.body {
                LineBody::Blank => continue,
                LineBody::TooLong { len } => Err(crate::input::line_too_long(len, self.max_line_bytes)),
                LineBody::Text(bytes) => generation::parse_line(&bytes, self.format, &self.defaults),
            };
            let item = match parsed.and_then(|req| self.request(req)) {
                Ok((custom_id, endpoint, request)) => {
                    Item::Run { line: number, custom_id, endpoint, request: Some(request), result: None }
                }
                Err(error) => Item::Failed { line: number, error },
            };
            items.push(item);
        }
        GenWindow { lines, end_offset, items }
    }

    /// The engine's request for a parsed line, or why it cannot run.
    fn request(&self, req: GenerationRequest) -> Result<(String, Endpoint, GenRequest), LineError> {
        let known = Some(req.custom_id.clone());
        let fail = |code, msg: String| LineError::new(code, msg).with_custom_id(known.clone());
        let prompt = match &req.prompt {
            Prompt::Chat { messages, prefill } => {
                let template = self.template.as_ref().ok_or_else(|| {
                    fail(
                        ErrorCode::NoChatTemplate,
                        "the model has no chat template; send /v1/completions requests with a prompt instead"
                            .into(),
                    )
                })?;
                let mut text = template.render(messages).map_err(|e| fail(ErrorCode::InvalidInput, e))?;
                if let Some(p) = prefill {
                    text.push_str(p);
                }
                self.vocab.prompt_ids(&text).map_err(|e| fail(ErrorCode::InvalidInput, e))?
            }
            Prompt::Text(text) => {
                self.vocab.prompt_ids(text).map_err(|e| fail(ErrorCode::InvalidInput, e))?
            }
            Prompt::Tokens(ids) => {
                let size = self.vocab.len();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
                    return Err(fail(
                        ErrorCode::InvalidInput,
                        format!("token id {bad} is outside the model's vocabulary of {size}"),
                    ));
                }
                ids.clone()
            }
        };
        if prompt.is_empty() {
            return Err(fail(ErrorCode::MissingInput, "the prompt is empty".into()));
        }
        // max_tokens comes from the request line and may be any u64: the sums below saturate, so
        // an absurd value is refused like a merely large one, never wrapped into a small one.
        let max_tokens = match req.max_tokens {
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
            None => self.context.saturating_sub(prompt.len()),
        };
        let total = prompt.len().saturating_add(max_tokens);
        if max_tokens == 0 || total > self.context {
            return Err(fail(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "the prompt has {} tokens and max_tokens is {max_tokens}: together they exceed the model's context of {} tokens",
                    prompt.len(),
                    self.context
                ),
            ));
        }
        if total > self.kv_tokens {
            return Err(fail(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "the prompt has {} tokens and max_tokens is {max_tokens}: {total} tokens do not fit the KV cache budget of {} tokens (--kv-cache-mib {})",
                    prompt.len(),
                    self.kv_tokens,
                    self.kv_budget_mib
                ),
            ));
        }
        let sampling = SamplingParams {
            temperature: req.temperature.unwrap_or(1.0) as f32,
            top_p: req.top_p.unwrap_or(1.0) as f32,
            top_k: req.top_k.unwrap_or(0) as usize,
            // Unseeded requests draw from their custom_id: a rerun reproduces them too.
            seed: req.seed.unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(req.custom_id.as_bytes())),
            presence_penalty: req.presence_penalty as f32,
            frequency_penalty: req.frequency_penalty as f32,
        };
        let request = GenRequest { tag: 0, prompt, max_tokens, sampling, stop: req.stop };
        Ok((req.custom_id, req.endpoint, request))
    }
}

/// Runs a decoder job's stages; returns whether the shard is done.
pub(crate) async fn run(
    stages: &Stages,
    model: DecoderModel,
    settings: Settings,
    reader: LineReader,
    out: &dyn ObjectStore,
    cp: &mut Checkpoint,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<bool, StageError> {
    let DecoderModel { decoder, vocab, template, .. } = model;
    let vocab = Arc::new(vocab);
    let kv_budget_mib = settings.engine.kv_cache_mib;
    let context = decoder.context_len();
    let engine = Engine::new(decoder, settings.engine);
    let kv_tokens = engine.capacity_tokens();
    let prep = Prep {
        vocab: vocab.clone(),
        template,
        format: settings.format,
        defaults: settings.defaults,
        max_line_bytes: settings.max_line_bytes,
        context,
        kv_tokens,
        kv_budget_mib,
    };
    tracing::info!(
        format = settings.format.as_str(),
        max_seqs = engine.max_seqs(),
        kv_cache_tokens = kv_tokens,
        kv_cache_mib = kv_budget_mib,
        context,
        "generating"
    );
    let (stop, metrics) = (stages.stop.clone(), stages.metrics.clone());
    let model_loop = move |rx: mpsc::Receiver<GenWindow>, tx: mpsc::Sender<GenWindow>| {
        let mut engine = engine;
        let started = Instant::now();
        let result = drive(&mut engine, &vocab, rx, tx, &stop, &metrics);
        let s = &engine.stats;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        tracing::info!(
            steps = s.steps,
            prefill_tokens = s.prefill_tokens,
            decode_tokens = s.decode_tokens,
            preemptions = s.preemptions,
            forward_seconds = s.forward_seconds,
            seconds = secs,
            decode_tokens_per_second = s.decode_tokens as f64 / secs,
            "generation stats"
        );
        result
    };
    let name = stages.model_name.clone();
    let format = settings.format;
    let encode = Arc::new(move |w: GenWindow| encode(w, &name, format));
    stages.run(reader, out, cp, bar, move |raw| prep.prepare(raw), model_loop, encode).await
}

/// The model thread: keeps the engine fed from incoming windows and hands back finished
/// windows in input order.
fn drive(
    engine: &mut Engine,
    vocab: &Vocab,
    mut rx: mpsc::Receiver<GenWindow>,
    tx: mpsc::Sender<GenWindow>,
    stop: &crate::shutdown::Stop,
    metrics: &crate::metrics::Metrics,
) -> Result<(), BackendError> {
    // (window, requests still generating), oldest first; a window's number is its tag's high half.
    let mut windows: VecDeque<(GenWindow, usize)> = VecDeque::new();
    let mut first_number = 0u64;
    let mut input_open = true;
    // Enough queued work that finished sequences are replaced at once, without reading far ahead.
    let target = 2 * engine.max_seqs();
    loop {
        while input_open && engine.in_flight() < target {
            let next = if engine.is_idle() && windows.iter().all(|(_, pending)| *pending == 0) {
                rx.blocking_recv().ok_or(TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match next {
                Ok(mut w) => {
                    let number = first_number + windows.len() as u64;
                    let mut pending = 0;
                    for (i, item) in w.items.iter_mut().enumerate() {
                        if let Item::Run { request, .. } = item
                            && let Some(mut req) = request.take()
                        {
                            req.tag = (number << 32) | i as u64;
                            match engine.add(req) {
                                Ok(()) => pending += 1,
                                Err(refused) => refuse(item, refused),
                            }
                        }
                    }
                    windows.push_back((w, pending));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        while windows.front().is_some_and(|(_, pending)| *pending == 0) {
            if let Some((w, _)) = windows.pop_front() {
                first_number += 1;
                if tx.blocking_send(w).is_err() {
                    return Ok(());
                }
            }
        }
        if engine.is_idle() {
            if !input_open && windows.is_empty() {
                return Ok(());
            }
            continue;
        }
        // Finish the step in flight, then drop unwritten windows: they are re-read on resume.
        if stop.requested() {
            return Ok(());
        }
        let before = engine.stats.clone();
        let started = Instant::now();
        let results = engine.step(vocab).map_err(|source| BackendError::Generation { source })?;
        metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        let tokens = (engine.stats.prefill_tokens + engine.stats.decode_tokens)
            - (before.prefill_tokens + before.decode_tokens);
        metrics.batch_padded_tokens.observe(tokens as f64);
        // A request the engine could not place fails alone, as its own error record.
        for refused in engine.take_refused() {
            if let Some((item, pending)) = item_of(&mut windows, first_number, refused.tag) {
                refuse(item, refused);
                *pending -= 1;
            }
        }
        for result in results {
            if let Some((Item::Run { result: slot, .. }, pending)) =
                item_of(&mut windows, first_number, result.tag)
            {
                *slot = Some(result);
                *pending -= 1;
            }
        }
    }
}

/// The item a tag names (its window's number in the high half, its index in the low half), with
/// its window's count of requests still generating.
fn item_of(
    windows: &mut VecDeque<(GenWindow, usize)>,
    first_number: u64,
    tag: u64,
) -> Option<(&mut Item, &mut usize)> {
    let (number, index) = (tag >> 32, (tag & 0xffff_ffff) as usize);
    let (w, pending) = windows.get_mut(number.checked_sub(first_number)? as usize)?;
    Some((w.items.get_mut(index)?, pending))
}

/// Turns a request the engine refused into that line's error record.
fn refuse(item: &mut Item, refused: Refused) {
    if let Item::Run { line, custom_id, .. } = item {
        let error = LineError::new(ErrorCode::ContextLengthExceeded, refused.reason)
            .with_custom_id(Some(std::mem::take(custom_id)));
        *item = Item::Failed { line: *line, error };
    }
}

fn encode(w: GenWindow, model: &str, format: Format) -> Encoded {
    let mut out = Vec::with_capacity(w.items.len() * 512);
    let mut counts = Counts { lines: w.lines, ..Counts::default() };
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for item in &w.items {
        match item {
            Item::Failed { line, error } => {
                match (&error.custom_id, format) {
                    (Some(id), Format::Anthropic) => {
                        chunk::begin_failed_result(&mut out, *line, id);
                        generation_record::write_anthropic_error(&mut out, id, error);
                    }
                    _ => chunk::push_error(&mut out, *line, error),
                }
                counts.failed += 1;
            }
            Item::Run { line, custom_id, endpoint, result: Some(r), .. } => {
                chunk::begin_result(&mut out, *line, custom_id);
                let g = Generated {
                    custom_id,
                    endpoint: *endpoint,
                    model,
                    text: &r.text,
                    finish: &r.finish,
                    prompt_tokens: r.prompt_tokens as u64,
                    completion_tokens: r.completion_tokens as u64,
                    created,
                };
                generation_record::write(&mut out, &g);
                counts.completed += 1;
                counts.prompt_tokens += r.prompt_tokens as u64;
                counts.completion_tokens += r.completion_tokens as u64;
            }
            Item::Run { line, custom_id, .. } => {
                // Unreachable: a window leaves only when every request in it has a result.
                let error = LineError::new(ErrorCode::ModelError, "the request produced no result")
                    .with_custom_id(Some(custom_id.clone()));
                chunk::push_error(&mut out, *line, &error);
                counts.failed += 1;
            }
        }
    }
    Encoded { bytes: out, counts, end_offset: w.end_offset }
}
