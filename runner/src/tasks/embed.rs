//! The embeddings task: request lines become token sequences (parsed, validated, tokenized),
//! length-sorted into batches inside each window, run through the embedder, and written back
//! in input order as OpenAI embedding responses.

use std::sync::Arc;
use std::time::Instant;

use barge_api::Counts;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::{Batch, Embedder, TextTokenizer};
use crate::batcher;
use crate::input::lines::{LineBody, LineReader};
use crate::input::openai::{EmbeddingInput, EncodingFormat, parse_line};
use crate::input::{ErrorCode, LineError};
use crate::output::checkpoint::Checkpoint;
use crate::output::chunk;
use crate::output::job::Batching;
use crate::output::record;
use crate::stages::{Encoded, RawWindow, StageError, Stages};
use crate::storage::ObjectStore;

/// What parsing and tokenizing need, shared with the preparing thread.
pub struct Prep {
    pub tokenizer: TextTokenizer,
    pub defaults: Map<String, Value>,
    pub dimensions: usize,
    pub max_seq_len: usize,
    pub max_line_bytes: usize,
    pub batching: Batching,
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

impl Prep {
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

/// The embedding path: the window's batches through the embedder, vectors out.
pub async fn run(
    stages: &Stages,
    ctx: Arc<Prep>,
    mut embedder: Box<dyn Embedder>,
    reader: LineReader,
    out: &dyn ObjectStore,
    cp: &mut Checkpoint,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<bool, StageError> {
    let dims = embedder.dimensions();
    let (stop, metrics) = (stages.stop.clone(), stages.metrics.clone());
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
                    vectors[seq * dims..(seq + 1) * dims].copy_from_slice(&out[row * dims..(row + 1) * dims]);
                }
            }
            if done_tx.blocking_send(DoneWindow { prepared, vectors }).is_err() {
                return Ok(());
            }
        }
        Ok(())
    };
    let name = stages.model_name.clone();
    let encode = Arc::new(move |done: DoneWindow| encode_chunk(&done, dims, &name));
    stages.run(reader, out, cp, bar, move |raw| ctx.prepare(raw), model, encode).await
}
