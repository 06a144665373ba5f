//! The `BatchJob` custom resource (`barge.dev/v1alpha1`): what a user asks for and what the
//! operator reports back.
//!
//! Every `///` comment on a field becomes its description in the CRD, which is what
//! `kubectl explain batchjob.spec` prints; keep them written for users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;

pub use crate::format::InputFormat;
use serde::{Deserialize, Serialize};

/// A batch of LLM requests (a JSONL file in S3) run through a model on the cluster's own GPUs.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "BatchJob",
    plural = "batchjobs",
    shortname = "bj",
    category = "barge",
    doc = "A batch of LLM requests (a JSONL file in S3) run through a model on the cluster's own GPUs, with progress, token counts and cost in its status.",
    namespaced,
    status = "BatchJobStatus",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "ETA", type_ = "string", json_path = ".status.eta"),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.cost.display"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(IMMUTABLE_WHILE_STARTED)
        .message("model, input, output and parallelism cannot change once the job has started")
        .reason(Reason::FieldValueForbidden),
    validation = fixed_once_started("storage", "its runners would resume against another store"),
    validation = fixed_once_started("defaults", "requests already answered used the old ones"),
    validation = fixed_once_started("batching", "its checkpoints were cut with the old windows"),
    validation = fixed_once_started("image", "a different runner would resume the output")
)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobSpec {
    /// The model that answers the requests.
    pub model: ModelSpec,
    /// The requests: a JSONL file with one request per line.
    pub input: InputSpec,
    /// Where results go.
    pub output: OutputSpec,
    /// How to reach S3 (or an S3-compatible store) and with which credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Number of runner pods; the input is split into this many byte ranges (shards).
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 256))]
    pub parallelism: u32,
    /// How requests are grouped into model batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,
    /// Request parameters applied where a request leaves them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RequestDefaults>,
    /// What each runner pod gets and where it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<RunnerResources>,
    /// Node labels a runner pod's node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the runner pods tolerate (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// PriorityClass of the runner pods; also orders queued jobs (higher first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Runner image; the operator's configured image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Secrets for pulling the runner image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// How long the job may take from its start, like the batch APIs' completion window:
    /// `24h`, `90m`, `1h30m`. When it passes, the pods stop, unfinished requests count as
    /// expired and the partial results are finalized.
    #[serde(default = "default_completion_window")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub completion_window: String,
    /// How many times a failed runner pod of one shard is replaced before the job fails.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(max = 100))]
    pub backoff_limit: u32,
    /// True stops the running pods (they checkpoint first) and keeps the job; false resumes it
    /// where it stopped. A job created suspended waits (as with Kueue).
    #[serde(default)]
    pub suspend: bool,
    /// True stops the job for good; the results so far are finalized and the phase becomes
    /// Cancelled. Cannot be undone.
    #[serde(default)]
    pub cancel: bool,
    /// Delete the BatchJob this long after it finished (the S3 output stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
    /// Overrides the operator's price table for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
}

/// The CEL rule behind [`BatchJobSpec`]'s immutability: the work order is fixed once a shard
/// may have written output for it.
pub const IMMUTABLE_WHILE_STARTED: &str = "!has(oldSelf.status) || !has(oldSelf.status.startTime) || \
     (self.spec.model == oldSelf.spec.model && self.spec.input == oldSelf.spec.input && \
     self.spec.output == oldSelf.spec.output && self.spec.parallelism == oldSelf.spec.parallelism)";

/// A CEL rule that fixes the optional `spec.<field>` once the job has started (set, changed or
/// removed alike): every field the runners' resume depends on is part of the work order.
fn fixed_once_started(field: &str, why: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "!has(oldSelf.status) || !has(oldSelf.status.startTime) || \
         (has(self.spec.{field}) ? (has(oldSelf.spec.{field}) && self.spec.{field} == oldSelf.spec.{field}) \
         : !has(oldSelf.spec.{field}))"
    ))
    .message(kube::core::Message::Message(format!(
        "spec.{field} cannot change once the job has started: {why}"
    )))
    .reason(kube::core::Reason::FieldValueForbidden)
}

fn default_parallelism() -> u32 {
    1
}

fn default_completion_window() -> String {
    "24h".into()
}

fn default_backoff_limit() -> u32 {
    3
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `s3://bucket/prefix/` folder with `config.json`, `*.safetensors` and `tokenizer.json`, or
    /// one `.gguf` file. The architecture is detected from the files.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub uri: String,
    /// Name reported in results' `model` field; the last part of the URI when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    /// `s3://bucket/key.jsonl`: one request per line.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"))]
    pub uri: String,
    /// Request format; `auto` reads the first line.
    #[serde(default)]
    pub format: InputFormat,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// `s3://bucket/prefix/`: the job writes `results.jsonl`, `errors.jsonl` and `manifest.json`
    /// there, and its working files under `_barge/`.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub uri: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Endpoint of an S3-compatible store (MinIO, Ceph, R2…); AWS S3 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`. Default: true when
    /// an endpoint is set (most S3-compatible stores need it), false for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Name of a Secret in the job's namespace with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`). Only the runner pods read
    /// it; absent means the pod's default AWS credential chain (IRSA, pod identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Most requests in one model batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_batch_size: Option<u32>,
    /// Most tokens in one model batch, counted after padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_tokens: Option<u32>,
    /// Requests per checkpoint: a killed pod redoes at most this many (runner default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub checkpoint_every: Option<u32>,
}

/// Request parameters used where a request does not set them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestDefaults {
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f64>,
    /// Seed for sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// What each runner pod asks of its node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerResources {
    /// `nvidia.com/gpu` per pod; 0 runs on CPU.
    #[serde(default)]
    #[schemars(range(max = 16))]
    pub gpus: u32,
    /// GPU model name used for pricing (a key of the price table), e.g. `nvidia-h100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// CPU request and limit per pod, e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit per pod, e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Size limit of the pod's model cache (an emptyDir on the node's disk, where the model is
    /// downloaded), default `100Gi`: the kubelet evicts a pod that outgrows it rather than let
    /// it fill the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<Quantity>,
}

/// A price for this job's compute.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Price of one GPU for one hour (or of one CPU for one hour for a CPU-only job).
    #[schemars(range(min = 0.0))]
    pub per_hour: f64,
    /// ISO 4217 code.
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

pub fn default_currency() -> String {
    "USD".into()
}

/// Where a job stands; for humans and printer columns (machines read `conditions`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    /// Every shard is done; the finalize pod merges their outputs.
    Finalizing,
    Suspended,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl Phase {
    /// No pod will run for this job again.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::Expired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Finalizing => "Finalizing",
            Phase::Suspended => "Suspended",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
            Phase::Expired => "Expired",
        }
    }
}

/// What the operator reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobStatus {
    #[serde(default)]
    pub phase: Phase,
    /// `Complete`, `Failed`, `Ready`, `Stalled`, `Suspended`; one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `done/total` requests for the printer column; the total is estimated (`~`) until every
    /// shard has read its whole input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default)]
    pub request_counts: RequestCounts,
    #[serde(default)]
    pub tokens: TokenCounts,
    /// Rates over the running pods' lifetimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    /// Estimated time left while running, e.g. `12m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// One entry per shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Set once the results are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// UIDs of the finalize pods that failed: finalize is retried up to `spec.backoffLimit`
    /// times (it is idempotent), each failed pod counted once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalize_failures: Vec<String>,
    /// When the job was admitted and its first pods created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestCounts {
    /// Requests in the input; known once every shard has read its whole range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Requests answered with a result.
    pub completed: u64,
    /// Requests answered with an error record.
    pub failed: u64,
    /// Requests not run before the completion window passed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: u64,
    /// Requests not run because the job was cancelled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cancelled: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    pub requests_per_second: f64,
    pub tokens_per_second: f64,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    pub index: u32,
    /// The shard's current (or last) pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub phase: ShardPhase,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
    /// Input lines this shard has read, valid or not.
    #[serde(default)]
    pub lines: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Input bytes this shard has read and the size of its range: the progress estimate.
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Pods of this shard that failed and were replaced.
    #[serde(default)]
    pub restarts: u32,
    /// Seconds that this shard's ended pods ran, each pod counted once (see `countedPods`).
    #[serde(default)]
    pub ended_pod_seconds: f64,
    /// UID of the pod whose runtime `podSeconds` tracks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Seconds the current pod has run so far.
    #[serde(default)]
    pub pod_seconds: f64,
    /// UIDs of the ended pods already in `endedPodSeconds`, so an operator restart never counts
    /// one twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_pods: Vec<String>,
    /// Why the shard's last pod failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ShardPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Stopped by suspend, cancel or the completion window.
    Stopped,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// `gpu` (priced per GPU-hour) or `cpu` (per CPU-hour).
    pub unit: String,
    /// GPU-seconds (or CPU-seconds) of every runner pod so far, restarts included.
    pub unit_seconds: f64,
    /// Price of one unit for one hour.
    pub per_hour: f64,
    pub currency: String,
    /// `unitSeconds / 3600 × perHour`.
    pub amount: f64,
    /// `amount` per million prompt + completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_million_tokens: Option<f64>,
    /// Where the price came from: `spec.pricing`, `priceTable/<gpuType>` or `default`.
    pub source: String,
    /// `amount` for the printer column, e.g. `0.42 USD`.
    pub display: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outputs {
    pub results: String,
    pub errors: String,
    pub manifest: String,
}

/// Condition types, as Kubernetes conventions and GitOps tools (kstatus, Argo CD) read them.
pub mod condition {
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    /// True once the job runs or has succeeded, so a GitOps sync does not wait for the batch.
    pub const READY: &str = "Ready";
    /// True when the job failed (kstatus reads `Stalled` as failed).
    pub const STALLED: &str = "Stalled";
    pub const SUSPENDED: &str = "Suspended";
    pub const ALL: [&str; 5] = [COMPLETE, FAILED, READY, STALLED, SUSPENDED];
}

/// Condition reasons: CamelCase, never empty.
pub mod reason {
    pub const QUEUED: &str = "Queued";
    pub const PODS_STARTING: &str = "PodsStarting";
    pub const RUNNING: &str = "Running";
    pub const FINALIZING: &str = "Finalizing";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const SUSPENDED: &str = "Suspended";
    pub const NOT_SUSPENDED: &str = "NotSuspended";
    pub const CANCELLED: &str = "Cancelled";
    pub const EXPIRED: &str = "CompletionWindowPassed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const FINALIZE_FAILED: &str = "FinalizeFailed";
    pub const MISSING_SECRET: &str = "CredentialsSecretMissing";
    pub const IMAGE_PULL: &str = "ImagePullFailed";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const NOT_FINISHED: &str = "NotFinished";
    pub const NOT_FAILED: &str = "NotFailed";
    /// The operator itself failed on this job (a panic in its reconcile): a bug to report.
    pub const OPERATOR_ERROR: &str = "OperatorError";
    /// Another unfinished job, created earlier, writes to the same output.
    pub const OUTPUT_IN_USE: &str = "OutputInUse";
    /// A pod cannot start yet (its image does not pull, its Secret is missing): waited out for
    /// the operator's start grace before the job fails.
    pub const POD_START_BLOCKED: &str = "PodStartBlocked";
    /// Admission refused a runner pod (a full ResourceQuota, a policy webhook): retried with
    /// backoff until it is let in, the refusal shown meanwhile.
    pub const POD_CREATE_REFUSED: &str = "PodCreateRefused";
}

/// Labels and annotations the operator puts on its pods.
pub mod labels {
    pub const JOB: &str = "barge.dev/job";
    pub const SHARD: &str = "barge.dev/shard";
    /// `runner` or `finalize`.
    pub const ROLE: &str = "barge.dev/role";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "barge-operator";
}
