//! Builders for tests: `JobBuilder::new("emb").parallelism(3).suspended().build()` and pods in
//! any state, made by the same functions the controller uses.

use barge_api::batchjob::{
    BatchJob, BatchJobSpec, BatchJobStatus, InputSpec, ModelSpec, OutputSpec, RequestDefaults,
    RunnerResources, StorageSpec,
};
use barge_api::{Counts, Outcome, ShardId, TerminationMessage};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use crate::config::Config;
use crate::runner_pod;

pub fn spec() -> BatchJobSpec {
    JobBuilder::new("emb").build().spec
}

pub fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).expect("valid time")
}

pub struct JobBuilder(BatchJob);

impl JobBuilder {
    pub fn new(name: &str) -> Self {
        let spec = BatchJobSpec {
            model: ModelSpec { uri: "s3://models/minilm/".into(), name: None },
            input: InputSpec { uri: "s3://in/requests.jsonl".into(), format: Default::default() },
            output: OutputSpec { uri: format!("s3://out/{name}/") },
            storage: Some(StorageSpec {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                force_path_style: Some(true),
                credentials_secret: None,
            }),
            parallelism: 1,
            batching: None,
            defaults: None,
            resources: None,
            node_selector: None,
            tolerations: None,
            priority_class_name: None,
            image: None,
            image_pull_secrets: None,
            completion_window: "24h".into(),
            backoff_limit: 3,
            suspend: false,
            cancel: false,
            ttl_seconds_after_finished: None,
            pricing: None,
        };
        let mut job = BatchJob::new(name, spec);
        job.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            creation_timestamp: Some(Time(at(0))),
            ..Default::default()
        };
        JobBuilder(job)
    }

    pub fn parallelism(mut self, n: u32) -> Self {
        self.0.spec.parallelism = n;
        self
    }

    pub fn credentials(mut self, secret: &str) -> Self {
        if let Some(s) = self.0.spec.storage.as_mut() {
            s.credentials_secret = Some(secret.into());
        }
        self
    }

    pub fn gpus(mut self, n: u32, gpu_type: &str) -> Self {
        self.0.spec.resources =
            Some(RunnerResources { gpus: n, gpu_type: Some(gpu_type.into()), ..Default::default() });
        self
    }

    pub fn max_tokens(mut self, n: u32) -> Self {
        self.0.spec.defaults = Some(RequestDefaults { max_tokens: Some(n), ..Default::default() });
        self
    }

    pub fn suspended(mut self) -> Self {
        self.0.spec.suspend = true;
        self
    }

    pub fn cancelled(mut self) -> Self {
        self.0.spec.cancel = true;
        self
    }

    pub fn window(mut self, w: &str) -> Self {
        self.0.spec.completion_window = w.into();
        self
    }

    pub fn backoff_limit(mut self, n: u32) -> Self {
        self.0.spec.backoff_limit = n;
        self
    }

    pub fn ttl(mut self, secs: u32) -> Self {
        self.0.spec.ttl_seconds_after_finished = Some(secs);
        self
    }

    pub fn status(mut self, status: BatchJobStatus) -> Self {
        self.0.status = Some(status);
        self
    }

    pub fn build(self) -> BatchJob {
        self.0
    }
}

/// A pod of `job` in a given state.
pub struct PodBuilder(Pod);

impl PodBuilder {
    pub fn runner(job: &BatchJob, shard: u32) -> Self {
        let mut pod = runner_pod::shard_pod(job, shard, &Config::default());
        pod.metadata.uid = Some(format!("pod-{shard}-a"));
        PodBuilder(pod)
    }

    pub fn finalize(job: &BatchJob, partial: bool) -> Self {
        let mut pod = runner_pod::finalize_pod(job, partial, &Config::default());
        pod.metadata.uid = Some("pod-finalize".into());
        PodBuilder(pod)
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.into());
        self
    }

    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(at(0)));
        self
    }

    pub fn running(mut self, started: i64) -> Self {
        self.0.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.1.0.2".into()),
            start_time: Some(Time(at(started))),
            container_statuses: Some(vec![ContainerStatus {
                name: "runner".into(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(Time(at(started))) }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        self
    }

    pub fn waiting(mut self, reason: &str, message: &str) -> Self {
        self.0.status = Some(PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "runner".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some(message.into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        self
    }

    /// Ended with `exit_code` after running from `started` to `finished`, reporting `counts`.
    pub fn ended(
        mut self,
        exit_code: i32,
        started: i64,
        finished: i64,
        counts: Counts,
        unprocessed: u64,
    ) -> Self {
        let outcome = match exit_code {
            0 => Outcome::Done,
            143 => Outcome::Interrupted,
            _ => Outcome::Failed,
        };
        let shard = crate::pod_view::shard_index(&self.0).map(|index| ShardId { index, count: 1 });
        let message = (exit_code != 0 && exit_code != 143).then(|| "cannot reach the bucket".to_string());
        let tm = TerminationMessage { shard, outcome, counts, unprocessed, message };
        self.0.status = Some(PodStatus {
            phase: Some(if exit_code == 0 { "Succeeded" } else { "Failed" }.into()),
            start_time: Some(Time(at(started))),
            container_statuses: Some(vec![ContainerStatus {
                name: "runner".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code,
                        started_at: Some(Time(at(started))),
                        finished_at: Some(Time(at(finished))),
                        message: Some(tm.to_json()),
                        reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }
}
