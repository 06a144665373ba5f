//! Live progress: counters the stages bump, served as JSON at `GET /progress` next to
//! `GET /metrics`, and the termination message written at exit.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use barge_api::{Counts, Progress, ShardId, TerminationMessage};

use crate::metrics::Metrics;

/// Where Kubernetes reads a container's termination message by default.
pub const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

pub struct ProgressState {
    shard: ShardId,
    started: String,
    clock: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Cumulative, including work done before a restart.
    total: Counts,
    /// Done by this process, for rates.
    session: Counts,
    done: bool,
    /// Absolute offsets: where the shard's range starts and ends, and the checkpointed position.
    range: (u64, u64),
    position: u64,
}

impl ProgressState {
    /// `range` is the shard's byte range and `position` the offset it resumes from.
    pub fn new(shard: ShardId, resumed: Counts, range: (u64, u64), position: u64) -> Self {
        ProgressState {
            shard,
            started: crate::clock::now_rfc3339(),
            clock: Instant::now(),
            inner: Mutex::new(Inner {
                total: resumed,
                session: Counts::default(),
                done: false,
                range,
                position,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave counters half-updated: each update is one `add`.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one checkpointed window that ended at input offset `position`.
    pub fn add(&self, window: &Counts, position: u64) {
        let mut inner = self.lock();
        inner.total.add(window);
        inner.session.add(window);
        inner.position = position;
    }

    pub fn set_done(&self) {
        let mut inner = self.lock();
        inner.done = true;
        inner.position = inner.range.1;
    }

    pub fn totals(&self) -> Counts {
        self.lock().total
    }

    pub fn session(&self) -> Counts {
        self.lock().session
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    pub fn snapshot(&self) -> Progress {
        let inner = self.lock();
        let secs = self.elapsed_secs().max(1e-9);
        let s = inner.session;
        Progress {
            shard: self.shard,
            counts: inner.total,
            requests_per_second: (s.completed + s.failed) as f64 / secs,
            tokens_per_second: (s.prompt_tokens + s.completion_tokens) as f64 / secs,
            started: self.started.clone(),
            done: inner.done,
            bytes_done: inner.position.saturating_sub(inner.range.0),
            bytes_total: inner.range.1.saturating_sub(inner.range.0),
        }
    }
}

#[derive(Clone)]
struct Served {
    progress: Arc<ProgressState>,
    metrics: Arc<Metrics>,
}

async fn progress_json(State(s): State<Served>) -> axum::Json<Progress> {
    axum::Json(s.progress.snapshot())
}

async fn metrics_text(
    State(s): State<Served>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// Binds `addr` now (so a taken port is a startup error) and serves until the process exits.
pub async fn serve(
    addr: SocketAddr,
    progress: Arc<ProgressState>,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/progress", get(progress_json))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Served { progress, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the progress server stopped");
        }
    });
    Ok(bound)
}

/// Writes the final counts where Kubernetes (or a test) reads them; failure only warns, since
/// the checkpoint in storage stays the durable truth.
pub fn write_termination_message(path: &Path, msg: &TerminationMessage) {
    if let Err(e) = std::fs::write(path, msg.to_json()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_adds_resumed_work_to_this_session() {
        let resumed = Counts { lines: 10, completed: 10, ..Counts::default() };
        let state = ProgressState::new(ShardId::WHOLE, resumed, (100, 300), 150);
        assert_eq!((state.snapshot().bytes_done, state.snapshot().bytes_total), (50, 200));
        let window = Counts { lines: 5, completed: 4, failed: 1, prompt_tokens: 50, completion_tokens: 0 };
        state.add(&window, 250);
        let p = state.snapshot();
        assert_eq!(p.bytes_done, 150);
        assert_eq!((p.counts.lines, p.counts.completed, p.counts.failed), (15, 14, 1));
        assert_eq!(state.session().completed, 4);
        assert!(p.requests_per_second > 0.0);
        assert!(!p.done);
        state.set_done();
        assert!(state.snapshot().done);
        assert_eq!(state.snapshot().bytes_done, 200);
    }
}
