//! The generic stage runner of a shard: input lines → prepare (parse, tokenize) → model →
//! chunks and checkpoints. A task (`tasks/embed.rs`, `tasks/generate.rs`) supplies the prepare,
//! model and encode bodies; this file owns the threads, the channels, the ordering and the
//! checkpoint after every window.
//!
//! The stages run concurrently over bounded channels, one window of lines at a time: while the
//! model works on a window, the next one is parsed and tokenized, and the previous one is
//! written. Every window is written in input order, so a checkpoint after each window marks a
//! clean line boundary.

use std::sync::Arc;

use barge_api::Counts;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backend::BackendError;
use crate::input::lines::{Line, LineBody, LineReader};
use crate::metrics::Metrics;
use crate::output::checkpoint::{self, Checkpoint, CheckpointError};
use crate::output::chunk;
use crate::progress::ProgressState;
use crate::shutdown::Stop;
use crate::storage::{ObjectStore, StorageError};

/// How the stages of a shard can fail.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "{stage} panicked ({message}): this is a bug in barge-runner; the checkpoint keeps what was written"
    )]
    Panicked { stage: &'static str, message: String },
}

/// Lines read from the input, not yet parsed.
pub struct RawWindow {
    pub lines: Vec<Line>,
}

/// A finished window as one chunk: its bytes, its counts and where in the input it ends.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub counts: Counts,
    pub end_offset: u64,
}

/// What every task's stages share: where progress and metrics go, how to stop, the window size.
pub struct Stages {
    pub model_name: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<ProgressState>,
    pub stop: Stop,
    pub window: usize,
    /// The shard's first byte: the progress bar counts from there.
    pub range_start: u64,
}

impl Stages {
    /// Runs the stages to the end of the shard or a stop request; returns whether the shard is
    /// done. `prepare` parses a window of lines, `model` turns prepared windows into finished
    /// ones (in input order), `encode` makes a finished window's chunk.
    #[allow(clippy::too_many_arguments)] // the three stage bodies are the point of this function
    pub async fn run<P, D>(
        &self,
        mut reader: LineReader,
        out: &dyn ObjectStore,
        cp: &mut Checkpoint,
        bar: Option<&indicatif::ProgressBar>,
        prepare: impl Fn(RawWindow) -> P + Send + 'static,
        model: impl FnOnce(mpsc::Receiver<P>, mpsc::Sender<D>) -> Result<(), BackendError> + Send + 'static,
        encode: Arc<dyn Fn(D) -> Encoded + Send + Sync>,
    ) -> Result<bool, StageError>
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
            return Err(StageError::Panicked { stage: "request parsing", message: panic_message(&panic) });
        }
        if let Some(e) = write_error {
            return Err(e);
        }
        match model_result {
            Ok(result) => result?,
            Err(panic) => {
                return Err(StageError::Panicked { stage: "the model", message: panic_message(&panic) });
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
    ) -> Result<(), StageError> {
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
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
