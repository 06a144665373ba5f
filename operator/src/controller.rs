//! Wiring and IO: watches BatchJobs and their pods, gathers what `plan` needs, writes the status
//! it decides and carries out its actions. No decisions are made here.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge_api::batchjob::{BatchJob, BatchJobStatus, Phase, labels};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::Error;
use crate::events;
use crate::metrics::Metrics;
use crate::plan::{self, Action, Admission, Observed};
use crate::progress_client::ProgressClient;
use crate::queue::{self, Entry, Slot};

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "barge-operator";

pub struct Context {
    pub client: Client,
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    jobs: Store<BatchJob>,
    pods: Store<Pod>,
    recorder: Recorder,
    progress: ProgressClient,
    /// Serialises admission so two reconciles never both take the last free slot.
    admission: tokio::sync::Mutex<()>,
    /// This process's latest verdict per job on whether it holds a queue slot. The job store
    /// lags our own status writes; this does not.
    slots: Mutex<HashMap<String, bool>>,
    priorities: Mutex<HashMap<String, i32>>,
    /// Wakes one job: the next in the queue, when a slot frees up or the one ahead started.
    wake: mpsc::UnboundedSender<ObjectRef<BatchJob>>,
    retries: Mutex<HashMap<String, u32>>,
    /// Per job, the API server's latest refusal to create one of its pods, until a create
    /// succeeds: the plan shows it as the Ready condition's reason.
    refusals: Mutex<HashMap<String, String>>,
}

fn key(job: &BatchJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

impl Context {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The job's pods from the watch cache, matched by owner UID (a same-named older job's
    /// leftovers are not ours).
    fn pods_of(&self, job: &BatchJob) -> Vec<Pod> {
        let uid = job.uid().unwrap_or_default();
        let ns = job.namespace();
        self.pods
            .state()
            .iter()
            .filter(|p| p.namespace() == ns)
            .filter(|p| p.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true)))
            .map(|p| (**p).clone())
            .collect()
    }

    async fn priority(&self, class: Option<&str>) -> i32 {
        let Some(class) = class else { return 0 };
        if let Some(v) = self.priorities.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(class)
        {
            return *v;
        }
        let value = match Api::<PriorityClass>::all(self.client.clone()).get_opt(class).await {
            Ok(Some(pc)) => pc.value.unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(%class, error = %e, "cannot read PriorityClass; ordering it as 0");
                return 0;
            }
        };
        self.priorities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(class.to_string(), value);
        value
    }

    /// Every job the store knows, as the queue sees it.
    async fn queue_entries(&self) -> Vec<Entry> {
        let jobs = self.jobs.state();
        let mut entries = Vec::with_capacity(jobs.len());
        for job in jobs {
            let k = key(&job);
            let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
            let ours = self.slots().get(&k).copied();
            let slot = match ours {
                Some(true) => Slot::Holding,
                _ if ours.is_none() && matches!(phase, Phase::Running | Phase::Finalizing) => Slot::Holding,
                _ if wants_to_start(&job) => Slot::Waiting,
                _ => Slot::Idle,
            };
            entries.push(Entry {
                key: k,
                priority: self.priority(job.spec.priority_class_name.as_deref()).await,
                created: job.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                pods: job.spec.parallelism,
                slot,
            });
        }
        entries
    }
}

impl Context {
    fn wake_job(&self, key: &str) {
        if let Some((ns, name)) = key.split_once('/') {
            let _ = self.wake.send(ObjectRef::new(name).within(ns));
        }
    }

    async fn wake_head(&self) {
        let _lock = self.admission.lock().await;
        if let Some(head) = queue::startable(&self.queue_entries().await, self.cfg.queue).first() {
            self.wake_job(head);
        }
    }
}

/// A job that has not started (or was suspended and resumed) and may be admitted.
fn wants_to_start(job: &BatchJob) -> bool {
    let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
    matches!(phase, Phase::Pending | Phase::Suspended) && !job.spec.suspend && !job.spec.cancel
}

#[tracing::instrument(skip_all, fields(job = %key(&job)))]
pub async fn reconcile(job: Arc<BatchJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let k = key(&job);
    if job.meta().deletion_timestamp.is_some() {
        // Its pods go with it (owner references); the S3 output stays.
        let held = ctx.slots().remove(&k);
        ctx.refusals().remove(&k);
        ctx.progress.forget(&k);
        if held == Some(true) {
            ctx.wake_head().await;
        }
        return Ok(Requeue::await_change());
    }
    let pods = ctx.pods_of(&job);
    let progress = ctx.progress.fetch(&k, &pods).await;

    let guard = if wants_to_start(&job) { Some(ctx.admission.lock().await) } else { None };
    let owner = guard.as_ref().and_then(|_| crate::output_owner::owner(&job, &ctx.jobs.state()));
    let (admission, wake) = match (guard.as_ref(), owner) {
        (Some(_), Some(by)) => (Admission::OutputInUse { by }, None),
        (Some(_), None) => {
            let verdict = queue::admit(&k, &ctx.queue_entries().await, ctx.cfg.queue);
            (verdict.admission, verdict.wake)
        }
        (None, _) => (Admission::Granted, None),
    };
    let refused = ctx.refusals().get(&k).cloned();
    let decision = plan::plan(
        &Observed {
            job: &job,
            pods: &pods,
            progress: &progress,
            admission,
            refused: refused.as_deref(),
            now: Timestamp::now(),
        },
        &ctx.cfg,
    );
    let old = job.status.clone().unwrap_or_default();
    // The queue slot is taken (or freed) under the admission lock, and the lock is released
    // before any write: admitting a thousand jobs must not wait on a thousand API round trips.
    let held = ctx.slots().insert(k.clone(), decision.holds_slot());
    drop(guard);
    let undo_slot = |ctx: &Context| match held {
        Some(v) => ctx.slots().insert(k.clone(), v),
        None => ctx.slots().remove(&k),
    };
    if job.status.as_ref() != Some(&decision.status) {
        match patch_status(&ctx.client, &job, &decision.status).await {
            Ok(true) => {}
            Ok(false) => {
                // The view was stale (the watch cache lags our own writes, or another replica
                // wrote): nothing was written and nothing is done; the next pass sees the newer
                // object.
                undo_slot(&ctx);
                tracing::debug!(job = %k, "status changed since this view; replanning");
                ctx.metrics.stale_views.inc();
                return Ok(Requeue::requeue(Duration::from_millis(500)));
            }
            Err(e) => {
                undo_slot(&ctx);
                return Err(e);
            }
        }
    }
    if let Some(next) = wake {
        ctx.wake_job(&next);
    }
    if held == Some(true) && !decision.holds_slot() {
        // A slot freed up: the head of the queue may start now rather than at its next requeue.
        ctx.wake_head().await;
    }
    for note in events::transitions(&old, &decision.status, &decision.why.message) {
        publish(&ctx, &job, note).await;
    }
    apply(&ctx, &job, decision.actions).await?;
    ctx.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&k);
    Ok(match decision.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Writes the status planned from `job`, only if the object is still the version the plan saw:
/// the resourceVersion is a precondition, so a plan made from a lagging cache (or by a paused
/// old leader) can never overwrite newer counts. Returns false when the view was stale.
pub async fn patch_status(client: &Client, job: &BatchJob, status: &BatchJobStatus) -> Result<bool, Error> {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "barge.dev/v1alpha1",
        "kind": "BatchJob",
        "metadata": {"resourceVersion": job.resource_version()},
        "status": status,
    });
    match api.patch_status(&job.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch)).await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::PatchStatus { job: key(job), source }),
    }
}

async fn apply(ctx: &Context, job: &BatchJob, actions: Vec<Action>) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for action in actions {
        match action {
            Action::CreatePod(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match pods
                    .create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pod)
                    .await
                {
                    Ok(_) => {
                        ctx.refusals().remove(&key(job));
                        ctx.metrics.pods_created.inc();
                        tracing::info!(job = %key(job), pod = %name, "created pod");
                    }
                    // The watch cache lagged behind an earlier create: the pod is there.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                        // The API server refuses the pod the spec asks for: the user must fix the spec.
                        let message = format!("the API server refused runner pod {name}: {}", e.message);
                        fail_invalid(ctx, job, message).await?;
                        return Ok(());
                    }
                    // Admission refused it: a PriorityClass that does not exist never will, so
                    // the job fails naming it; anything else (a ResourceQuota that is full) may
                    // free up, and is retried with backoff, told as a Warning event each time.
                    Err(kube::Error::Api(e)) if e.code == 403 => {
                        if e.message.contains("PriorityClass") {
                            let message = format!(
                                "spec.priorityClassName: the API server refused runner pod {name}: {}",
                                e.message
                            );
                            fail_invalid(ctx, job, message).await?;
                            return Ok(());
                        }
                        let message =
                            format!("the API server refused runner pod {name} (retrying): {}", e.message);
                        ctx.refusals().insert(key(job), message.clone());
                        let note = events::Note {
                            reason: barge_api::batchjob::reason::POD_CREATE_REFUSED,
                            message,
                            warning: true,
                        };
                        publish(ctx, job, note).await;
                        return Err(Error::CreatePod { pod: name, source: kube::Error::Api(e) });
                    }
                    Err(source) => return Err(Error::CreatePod { pod: name, source }),
                }
            }
            Action::DeletePod { name, uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                    ..Default::default()
                };
                match pods.delete(&name, &dp).await {
                    Ok(_) => {
                        ctx.metrics.pods_deleted.inc();
                        tracing::info!(job = %key(job), pod = %name, "deleting pod");
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(source) => return Err(Error::DeletePod { pod: name, source }),
                }
            }
            Action::DeleteJob => {
                let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &ns);
                match api.delete(&job.name_any(), &DeleteParams::background()).await {
                    Ok(_) => tracing::info!(job = %key(job), "deleted after ttlSecondsAfterFinished"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => return Err(Error::DeleteJob { job: key(job), source }),
                }
            }
        }
    }
    Ok(())
}

/// Marks the job Failed with `InvalidSpec` when the API server refused a pod built from it.
async fn fail_invalid(ctx: &Context, job: &BatchJob, message: String) -> Result<(), Error> {
    fail_job(ctx, job, barge_api::batchjob::reason::INVALID_SPEC, message).await
}

/// Reconciles one job; a panic in it (a bug, or a report no test foresaw) fails that job with
/// reason `OperatorError` instead of the process. The controller polls every reconcile in its
/// own task, so an unwinding one would otherwise stop the reconciling of every job.
pub async fn reconcile_isolated(job: Arc<BatchJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let panic = match AssertUnwindSafe(reconcile(job.clone(), ctx.clone())).catch_unwind().await {
        Ok(result) => return result,
        Err(panic) => panic,
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    tracing::error!(job = %key(&job), panic = %what, "reconcile panicked; the job fails, the operator goes on");
    ctx.metrics.errors.with_label_values(&["panic"]).inc();
    let message = format!("the operator failed while reconciling this job ({what}); please report it");
    fail_job(&ctx, &job, barge_api::batchjob::reason::OPERATOR_ERROR, message).await?;
    Ok(Requeue::await_change())
}

/// Marks the job Failed for `reason`, frees its queue slot and records the transition.
async fn fail_job(ctx: &Context, job: &BatchJob, reason: &'static str, message: String) -> Result<(), Error> {
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.phase = Phase::Failed;
    let why = crate::conditions::Why::new(reason, message);
    let now = Timestamp::now();
    status.conditions =
        crate::conditions::conditions(Phase::Failed, &why, job.metadata.generation, &old.conditions, now);
    status.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    if !patch_status(&ctx.client, job, &status).await? {
        // Replanned from the newer object on the next pass.
        return Ok(());
    }
    if ctx.slots().insert(key(job), false) == Some(true) {
        ctx.wake_head().await;
    }
    for note in events::transitions(&old, &status, &why.message) {
        publish(ctx, job, note).await;
    }
    Ok(())
}

async fn publish(ctx: &Context, job: &BatchJob, note: events::Note) {
    let event = Event {
        type_: if note.warning { EventType::Warning } else { EventType::Normal },
        reason: note.reason.into(),
        note: Some(note.message),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(job = %key(job), error = %e, "cannot publish event");
    }
}

pub fn error_policy(job: Arc<BatchJob>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    let k = key(&job);
    let tries = {
        let mut retries = ctx.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = retries.entry(k.clone()).or_insert(0);
        *n += 1;
        *n
    };
    // Exponential backoff: 1 s, 2 s, 4 s … capped at 5 minutes.
    let delay = Duration::from_secs(1u64 << tries.min(8)).min(Duration::from_secs(300));
    tracing::warn!(job = %k, error = %error, source = ?std::error::Error::source(error).map(ToString::to_string), retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// Refreshes the job gauges from the watch cache.
fn update_gauges(metrics: &Metrics, jobs: &Store<BatchJob>) {
    let mut by_phase: BTreeMap<&'static str, i64> = BTreeMap::new();
    let (mut completed, mut failed, mut prompt, mut completion) = (0i64, 0i64, 0i64, 0i64);
    let mut cost: BTreeMap<String, f64> = BTreeMap::new();
    for job in jobs.state() {
        let status = job.status.clone().unwrap_or_default();
        *by_phase.entry(status.phase.as_str()).or_default() += 1;
        completed += status.request_counts.completed as i64;
        failed += status.request_counts.failed as i64;
        prompt += status.tokens.prompt as i64;
        completion += status.tokens.completion as i64;
        if let Some(c) = status.cost {
            *cost.entry(c.currency).or_default() += c.amount;
        }
    }
    metrics.jobs.reset();
    for (phase, n) in by_phase {
        metrics.jobs.with_label_values(&[phase]).set(n);
    }
    metrics.requests.with_label_values(&["completed"]).set(completed);
    metrics.requests.with_label_values(&["failed"]).set(failed);
    metrics.tokens.with_label_values(&["prompt"]).set(prompt);
    metrics.tokens.with_label_values(&["completion"]).set(completion);
    metrics.cost_micros.reset();
    for (currency, amount) in cost {
        metrics.cost_micros.with_label_values(&[&currency]).set((amount * 1e6) as i64);
    }
}

/// Runs the controller until `shutdown` resolves or the watch streams end.
pub async fn run(
    client: Client,
    cfg: Config,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (jobs_api, pods_api): (Api<BatchJob>, Api<Pod>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let pod_cfg = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let (pods, pod_writer) = reflector::store();
    let pod_stream = watcher(pods_api, pod_cfg)
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects()
        .predicate_filter(kube::runtime::predicates::resource_version, Default::default());
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    let controller = Controller::new(jobs_api, watcher::Config::default().any_semantic())
        // Debounce coalesces a burst of one job's pod updates into one pass; it is also the floor
        // of a new job's first status, so it stays short (reconcile latency: docs/reliability.md).
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(150)))
        .owns_stream(pod_stream)
        .reconcile_on(futures::stream::poll_fn(move |cx| wake_rx.poll_recv(cx)))
        .graceful_shutdown_on(shutdown);
    let jobs = controller.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
        ),
        client,
        progress: ProgressClient::new(cfg.progress),
        cfg,
        metrics: metrics.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        admission: tokio::sync::Mutex::new(()),
        slots: Mutex::new(HashMap::new()),
        priorities: Mutex::new(HashMap::new()),
        wake: wake_tx,
        retries: Mutex::new(HashMap::new()),
        refusals: Mutex::new(HashMap::new()),
    });
    let gauges = {
        let (metrics, jobs) = (metrics.clone(), jobs.clone());
        tokio::spawn(async move {
            loop {
                update_gauges(&metrics, &jobs);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let readiness = {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        tokio::spawn(async move {
            if jobs.wait_until_ready().await.is_ok() && pods.wait_until_ready().await.is_ok() {
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    controller
        .run(reconcile_isolated, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::trace!(job = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    gauges.abort();
    readiness.abort();
}

/// Whether the BatchJob CRD is installed: the operator cannot do anything without it.
pub async fn crd_installed(client: &Client, namespace: Option<&str>) -> Result<bool, kube::Error> {
    let api: Api<BatchJob> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
