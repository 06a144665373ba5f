//! The pods a job runs: one runner pod per shard and one finalize pod, built as pure functions
//! of the job and the operator's config.
//!
//! Guarantees: a shard's pod always has the same name (`<job>-shard-<i>`), so the API server
//! itself refuses a second live pod for one shard. The pod gets the job's S3 credentials only as
//! `secretKeyRef` env; the operator never reads the Secret.

use std::collections::BTreeMap;

use barge_api::batchjob::{BatchJob, InputFormat, labels};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    Pod, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Resource;
use kube::api::ObjectMeta;

use crate::config::Config;

/// Where the runner keeps downloaded models: an emptyDir, since the root filesystem is read-only.
pub const CACHE_DIR: &str = "/var/cache/barge";
pub const TERMINATION_PATH: &str = "/dev/termination-log";
pub const RUNNER_UID: i64 = 65532;
/// The model cache's size limit unless the job sets `resources.modelCache`.
pub const DEFAULT_MODEL_CACHE: &str = "100Gi";
/// Scratch space of a runner pod (its root filesystem is read-only).
const TMP_SIZE: &str = "1Gi";

pub fn shard_pod_name(job: &str, index: u32) -> String {
    format!("{job}-shard-{index}")
}

pub fn finalize_pod_name(job: &str) -> String {
    format!("{job}-finalize")
}

/// The runner pod of shard `index`.
pub fn shard_pod(job: &BatchJob, index: u32, cfg: &Config) -> Pod {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let spec = &job.spec;
    let mut args: Vec<String> = vec![
        "run".into(),
        "--model".into(),
        spec.model.uri.clone(),
        "--input".into(),
        spec.input.uri.clone(),
        "--output".into(),
        spec.output.uri.clone(),
        "--shard".into(),
        format!("{index}/{}", spec.parallelism),
        // The pod IP comes from the downward API: the operator asks this address for progress.
        "--listen".into(),
        format!("$(POD_IP):{}", cfg.progress.port),
        "--cache-dir".into(),
        CACHE_DIR.into(),
    ];
    match spec.input.format {
        // Spelled as the runner's flag reads it: one enum, one set of names.
        InputFormat::Auto => {}
        fixed => args.extend(["--format".into(), fixed.as_str().into()]),
    }
    if let Some(model_name) = &spec.model.name {
        args.extend(["--model-name".into(), model_name.clone()]);
    }
    if let Some(b) = &spec.batching {
        if let Some(n) = b.max_batch_size {
            // Sequences per batch: an encoder's batch, or a decoder's running sequences.
            args.extend(["--max-batch-size".into(), n.to_string(), "--max-seqs".into(), n.to_string()]);
        }
        if let Some(n) = b.max_batch_tokens {
            args.extend(["--max-batch-tokens".into(), n.to_string()]);
        }
        if let Some(n) = b.checkpoint_every {
            args.extend(["--window".into(), n.to_string()]);
        }
    }
    if let Some(d) = &spec.defaults {
        let json = defaults_json(d);
        if json != "{}" {
            args.extend(["--defaults".into(), json]);
        }
    }
    args.extend(["--device".into(), runner_device(job).into()]);
    let mut env = vec![field_env("POD_IP", "status.podIP")];
    env.extend(storage_env(job));
    pod(job, shard_pod_name(name, index), "runner", Some(index), args, env, cfg, true)
}

/// The runner's `--device`, never left to its `auto`: a job that holds GPUs must run on one, and
/// fails at once when the pod cannot use it rather than quietly paying for an idle GPU; a job
/// without GPUs runs on the CPU even on a GPU node whose runtime exposes every GPU to every
/// container (NVIDIA's `NVIDIA_VISIBLE_DEVICES=all` images), where `auto` would take a GPU the
/// scheduler never gave it.
fn runner_device(job: &BatchJob) -> &'static str {
    match &job.spec.resources {
        Some(r) if r.gpus > 0 => "cuda",
        _ => "cpu",
    }
}

/// The pod that merges every shard's output. `partial` merges what is there even though some
/// shards did not finish (cancel, completion window).
pub fn finalize_pod(job: &BatchJob, partial: bool, cfg: &Config) -> Pod {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut args: Vec<String> = vec![
        "finalize".into(),
        "--output".into(),
        job.spec.output.uri.clone(),
        "--shards".into(),
        job.spec.parallelism.to_string(),
    ];
    if partial {
        args.push("--partial".into());
    }
    pod(job, finalize_pod_name(name), "finalize", None, args, storage_env(job), cfg, false)
}

fn defaults_json(d: &barge_api::batchjob::RequestDefaults) -> String {
    // The runner takes request parameters by their wire names (snake_case), as requests spell them.
    let mut m = serde_json::Map::new();
    if let Some(v) = d.max_tokens {
        m.insert("max_tokens".into(), v.into());
    }
    if let Some(v) = d.temperature {
        m.insert("temperature".into(), v.into());
    }
    if let Some(v) = d.top_p {
        m.insert("top_p".into(), v.into());
    }
    if let Some(v) = d.seed {
        m.insert("seed".into(), v.into());
    }
    serde_json::Value::Object(m).to_string()
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn secret_env(name: &str, secret: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: name.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn storage_env(job: &BatchJob) -> Vec<EnvVar> {
    let mut env = vec![plain_env("BARGE_LOG_FORMAT", "json")];
    let Some(s) = &job.spec.storage else { return env };
    if let Some(endpoint) = &s.endpoint {
        env.push(plain_env("AWS_ENDPOINT_URL", endpoint.clone()));
    }
    if let Some(region) = &s.region {
        env.push(plain_env("AWS_REGION", region.clone()));
    }
    if let Some(path_style) = s.force_path_style {
        env.push(plain_env("BARGE_S3_FORCE_PATH_STYLE", path_style.to_string()));
    }
    if let Some(secret) = &s.credentials_secret {
        env.push(secret_env("AWS_ACCESS_KEY_ID", secret, false));
        env.push(secret_env("AWS_SECRET_ACCESS_KEY", secret, false));
        env.push(secret_env("AWS_SESSION_TOKEN", secret, true));
    }
    env
}

#[allow(clippy::too_many_arguments)]
fn pod(
    job: &BatchJob,
    pod_name: String,
    role: &str,
    shard: Option<u32>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    cfg: &Config,
    runner: bool,
) -> Pod {
    let spec = &job.spec;
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let mut pod_labels = BTreeMap::from([
        (labels::JOB.to_string(), job_name),
        (labels::ROLE.to_string(), role.to_string()),
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
    ]);
    if let Some(i) = shard {
        pod_labels.insert(labels::SHARD.into(), i.to_string());
    }
    let owner = job.controller_owner_ref(&()).expect("a BatchJob read from the API has a name and uid");
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if let Some(r) = &spec.resources {
        if let Some(cpu) = &r.cpu {
            requests.insert("cpu".to_string(), cpu.clone());
            limits.insert("cpu".to_string(), cpu.clone());
        }
        if let Some(mem) = &r.memory {
            requests.insert("memory".to_string(), mem.clone());
            limits.insert("memory".to_string(), mem.clone());
        }
        // The finalize pod only merges files: it never holds a GPU.
        if runner && r.gpus > 0 {
            limits.insert("nvidia.com/gpu".to_string(), Quantity(r.gpus.to_string()));
            requests.insert("nvidia.com/gpu".to_string(), Quantity(r.gpus.to_string()));
        }
    }
    let mut ports = None;
    if runner {
        ports = Some(vec![ContainerPort {
            name: Some("progress".into()),
            container_port: cfg.progress.port.into(),
            ..Default::default()
        }]);
    }
    let container = Container {
        name: role.into(),
        image: Some(spec.image.clone().unwrap_or_else(|| cfg.runner_image.clone())),
        image_pull_policy: Some(cfg.runner_image_pull_policy.clone()),
        args: Some(args),
        env: Some(env),
        ports,
        resources: Some(ResourceRequirements {
            limits: (!limits.is_empty()).then_some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        termination_message_path: Some(TERMINATION_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: "cache".into(), mount_path: CACHE_DIR.into(), ..Default::default() },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(pod_labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // Long enough for the runner to finish its batch and write a checkpoint on SIGTERM.
            termination_grace_period_seconds: Some(120),
            node_selector: spec.node_selector.clone(),
            tolerations: spec.tolerations.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNNER_UID),
                run_as_group: Some(RUNNER_UID),
                fs_group: Some(RUNNER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: Some(vec![
                Volume {
                    name: "cache".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(
                            job.spec
                                .resources
                                .as_ref()
                                .and_then(|r| r.model_cache.clone())
                                .unwrap_or_else(|| Quantity(DEFAULT_MODEL_CACHE.into())),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity(TMP_SIZE.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::JobBuilder;

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().expect("spec").containers[0]
    }

    fn env_names(pod: &Pod) -> Vec<String> {
        container(pod).env.iter().flatten().map(|e| e.name.clone()).collect()
    }

    /// The model cache once had no size limit: a runaway download could fill the node's disk.
    #[test]
    fn the_pod_s_scratch_volumes_have_size_limits() {
        let limits = |job: &BatchJob| -> Vec<(String, Option<String>)> {
            let pod = shard_pod(job, 0, &Config::default());
            pod.spec
                .expect("spec")
                .volumes
                .expect("volumes")
                .into_iter()
                .map(|v| (v.name, v.empty_dir.and_then(|e| e.size_limit).map(|q| q.0)))
                .collect()
        };
        let job = JobBuilder::new("emb").build();
        assert_eq!(
            limits(&job),
            [("cache".to_string(), Some("100Gi".to_string())), ("tmp".to_string(), Some("1Gi".to_string()))]
        );
        let mut big = job.clone();
        big.spec.resources.get_or_insert_with(Default::default).model_cache = Some(Quantity("400Gi".into()));
        assert_eq!(limits(&big)[0].1.as_deref(), Some("400Gi"));
    }

    #[test]
    fn a_shard_pod_carries_the_work_order_and_is_owned_by_its_job() {
        let job = JobBuilder::new("emb").parallelism(3).build();
        let pod = shard_pod(&job, 2, &Config::default());
        assert_eq!(pod.metadata.name.as_deref(), Some("emb-shard-2"));
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("BatchJob", Some(true)));
        let args = container(&pod).args.clone().expect("args").join(" ");
        assert!(args.starts_with("run --model s3://models/minilm/ --input s3://in/requests.jsonl"), "{args}");
        assert!(args.contains("--shard 2/3"), "{args}");
        assert!(args.contains("--listen $(POD_IP):9090"), "{args}");
        assert!(!args.contains("--format"), "auto is the runner's default: {args}");
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[labels::SHARD], "2");
        assert_eq!(labels[labels::JOB], "emb");
    }

    #[test]
    fn credentials_reach_the_pod_only_as_secret_references() {
        let job = JobBuilder::new("emb").credentials("s3-creds").build();
        let pod = shard_pod(&job, 0, &Config::default());
        let env = container(&pod).env.clone().expect("env");
        let key = env.iter().find(|e| e.name == "AWS_SECRET_ACCESS_KEY").expect("secret env");
        assert_eq!(key.value, None);
        let sel = key.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secretKeyRef");
        assert_eq!(sel.name, "s3-creds");
        let token = env.iter().find(|e| e.name == "AWS_SESSION_TOKEN").expect("token env");
        assert_eq!(
            token.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).and_then(|s| s.optional),
            Some(true)
        );
        assert!(env_names(&pod).contains(&"AWS_ENDPOINT_URL".to_string()));
    }

    #[test]
    fn runner_pods_meet_the_restricted_pod_security_standard() {
        let pod = shard_pod(&JobBuilder::new("emb").build(), 0, &Config::default());
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let psc = spec.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        let sc = container(&pod).security_context.as_ref().expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    }

    #[test]
    fn gpus_are_requested_by_runners_but_not_by_the_finalize_pod() {
        let job = JobBuilder::new("chat").gpus(2, "nvidia-h100").build();
        let cfg = Config::default();
        let runner = shard_pod(&job, 0, &cfg);
        let limits = container(&runner).resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
        assert_eq!(limits["nvidia.com/gpu"], Quantity("2".into()));
        let fin = finalize_pod(&job, true, &cfg);
        let limits = container(&fin).resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
        assert!(!limits.contains_key("nvidia.com/gpu"));
        let args = container(&fin).args.clone().expect("args").join(" ");
        assert_eq!(args, "finalize --output s3://out/chat/ --shards 1 --partial");
    }

    #[test]
    fn runners_use_the_gpu_their_job_asks_for_and_the_cpu_otherwise() {
        let device = |job: &BatchJob| {
            let args = container(&shard_pod(job, 0, &Config::default())).args.clone().expect("args");
            let at = args.iter().position(|a| a == "--device").expect("a --device flag");
            args[at + 1].clone()
        };
        assert_eq!(device(&JobBuilder::new("chat").gpus(1, "nvidia-h100").build()), "cuda");
        assert_eq!(device(&JobBuilder::new("emb").build()), "cpu");
    }

    #[test]
    fn an_explicit_input_format_reaches_the_runner() {
        let mut job = JobBuilder::new("chat").build();
        job.spec.input.format = InputFormat::Anthropic;
        let args = container(&shard_pod(&job, 0, &Config::default())).args.clone().expect("args").join(" ");
        assert!(args.contains("--format anthropic"), "{args}");
    }

    #[test]
    fn request_defaults_travel_with_their_wire_names() {
        let job = JobBuilder::new("chat").max_tokens(64).build();
        let args = container(&shard_pod(&job, 0, &Config::default())).args.clone().expect("args");
        let at = args.iter().position(|a| a == "--defaults").expect("defaults flag");
        assert_eq!(args[at + 1], r#"{"max_tokens":64}"#);
    }
}
