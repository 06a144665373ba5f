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
            Ok(r) if r.status().is_success() => match r.json::<Progress>().await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "progress answer is not the expected JSON");
                    None
                }
            },
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
