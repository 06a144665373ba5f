//! Asks running runners for their live progress over HTTP, at a bounded rate and with a short
//! timeout, so a hung runner delays only its own job's reconcile, by at most the timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use barge_api::Progress;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;

use crate::config::ProgressConfig;
use crate::pod_view::{self, PodPhase};
use crate::untrusted;

/// When a job's runners were last asked, and what they answered, by shard.
type Answers = HashMap<String, (Instant, BTreeMap<u32, Progress>)>;

pub struct ProgressClient {
    http: reqwest::Client,
    cfg: ProgressConfig,
    /// Last answers per job, so reconciles triggered by watch events do not poll again.
    cache: Mutex<Answers>,
}

impl ProgressClient {
    pub fn new(cfg: ProgressConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout())
            .connect_timeout(cfg.timeout())
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        ProgressClient { http, cfg, cache: Mutex::new(HashMap::new()) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Progress of the job's running shard pods, at most once per poll interval per job.
    pub async fn fetch(&self, job_key: &str, pods: &[Pod]) -> BTreeMap<u32, Progress> {
        let fresh_for = self.cfg.interval().mul_f64(0.8);
        if let Some((at, cached)) = self.cache().get(job_key)
            && at.elapsed() < fresh_for
        {
            return cached.clone();
        }
        let asks = pods.iter().filter(|p| pod_view::phase(p) == PodPhase::Running).filter_map(|p| {
            let shard = pod_view::shard_index(p)?;
            let url = pod_view::progress_url(p, self.cfg.port)?;
            Some(async move { (shard, self.ask(&url).await) })
        });
        let answers: BTreeMap<u32, Progress> =
            join_all(asks).await.into_iter().filter_map(|(shard, p)| Some((shard, p?))).collect();
        self.cache().insert(job_key.to_string(), (Instant::now(), answers.clone()));
        answers
    }

    async fn ask(&self, url: &str) -> Option<Progress> {
        let res = self.http.get(url).send().await;
        match res {
            Ok(r) if r.status().is_success() => {
                let body = read_capped(r, untrusted::MAX_PROGRESS_BODY).await.or_else(|| {
                    tracing::debug!(%url, limit = untrusted::MAX_PROGRESS_BODY, "progress answer too long or cut off");
                    None
                })?;
                match serde_json::from_slice::<Progress>(&body) {
                    Ok(p) => Some(untrusted::progress(p)),
                    Err(e) => {
                        tracing::debug!(%url, error = %e, "progress answer is not the expected JSON");
                        None
                    }
                }
            }
            Ok(r) => {
                tracing::debug!(%url, status = %r.status(), "progress request refused");
                None
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "progress request failed");
                None
            }
        }
    }

    pub fn forget(&self, job_key: &str) {
        self.cache().remove(job_key);
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval()
    }
}

/// The body, or None when it is longer than `limit` (read no further than that) or breaks off.
async fn read_capped(mut res: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-answer HTTP server on loopback: `body` in chunked encoding (no Content-Length, so
    /// only reading can find its size). Returns the URL.
    async fn serve(body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut request = [0u8; 1024];
            let _ = sock.read(&mut request).await;
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = sock.write_all(head.as_bytes()).await;
            for part in body.chunks(8192) {
                let _ = sock.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await;
                let _ = sock.write_all(part).await;
                let _ = sock.write_all(b"\r\n").await;
            }
            let _ = sock.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}/progress")
    }

    fn answer(padding: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "shard": {"index": 0, "count": 1}, "lines": 5, "completed": 5, "failed": 0,
            "promptTokens": 9, "completionTokens": 0, "requestsPerSecond": -3.0,
            "tokensPerSecond": 2.0, "started": "x".repeat(padding), "done": false,
        }))
        .expect("JSON")
    }

    fn client() -> ProgressClient {
        ProgressClient::new(ProgressConfig { timeout_milliseconds: 5000, ..ProgressConfig::default() })
    }

    #[tokio::test]
    async fn a_progress_answer_is_read_and_its_numbers_made_sane() {
        let p = client().ask(&serve(answer(10)).await).await.expect("an answer");
        assert_eq!(p.counts.completed, 5);
        assert_eq!(p.requests_per_second, 0.0, "a negative rate is unknown");
    }

    #[tokio::test]
    async fn a_progress_answer_over_64_kib_is_dropped() {
        let body = answer(untrusted::MAX_PROGRESS_BODY);
        assert!(client().ask(&serve(body).await).await.is_none());
    }
}
