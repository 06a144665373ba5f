//! The agent's main loop: register the node, keep it alive, watch the pods bound to it and hand
//! each (by UID) to its own worker task; on shutdown, stop every pod's process and wait for it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::cli::Config;
use super::error::Error;
use super::heartbeat;
use super::ip_pool::IpPool;
use super::process::Groups;
use super::worker::{self, Context, SHUTDOWN_GRACE};

/// Runs the node until `shutdown` resolves, then stops every pod's process before returning.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let ips = IpPool::new(&cfg.pod_ip_base)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|source| Error::StateDir { path: cfg.state_dir.clone(), source })?;
    let client = client(cfg.kubeconfig.as_deref()).await?;
    let registration = heartbeat::register(&client, &cfg.node).await?;

    let stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::run(client.clone(), cfg.node.clone(), registration, stop.clone()));
    let inherited_env = cfg
        .inherited_env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect();
    let ctx = Arc::new(Context {
        client: client.clone(),
        state_dir: cfg.state_dir.clone(),
        images: cfg.images.clone(),
        inherited_env,
        ips: Mutex::new(ips),
        groups: Arc::new(Groups::default()),
        shutdown: stop.clone(),
    });
    let groups = ctx.groups.clone();
    let mut pods = Pods::new(ctx);

    let selector = format!("spec.nodeName={}", cfg.node.name);
    let api: Api<Pod> = Api::all(client);
    let events = watcher(api, watcher::Config::default().fields(&selector)).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(node = %cfg.node.name, state_dir = %cfg.state_dir.display(), "watching pods bound to this node");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            event = events.next() => match event {
                Some(Ok(event)) => pods.handle(event),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
        }
    }

    tracing::info!("shutting down: stopping every pod's process");
    stop.cancel();
    pods.wait_all(SHUTDOWN_GRACE + Duration::from_secs(5)).await;
    // Whatever a worker could not stop in time is killed here: no pod process outlives the agent.
    let left = groups.kill_all();
    if left > 0 {
        tracing::warn!(groups = left, "killed pod processes left running at shutdown");
    }
    beat.abort();
    Ok(())
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let fail = |source| Error::Kubeconfig { path: path.to_path_buf(), source };
            let file = kube::config::Kubeconfig::read_from(path).map_err(fail)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(fail)?
        }
        None => kube::Config::infer().await.map_err(Error::InferConfig)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// The pods this node runs, each with the channel that carries its latest state to its worker.
///
/// Dropping a pod's sender tells its worker that the pod is gone from the API.
struct Pods {
    ctx: Arc<Context>,
    senders: HashMap<String, watch::Sender<Pod>>,
    tasks: JoinSet<()>,
    /// True until the first listing is complete: pods seen in it were bound before this agent.
    first_listing: bool,
    /// UIDs seen since the watch (re)started its listing.
    listed: HashSet<String>,
}

impl Pods {
    fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            senders: HashMap::new(),
            tasks: JoinSet::new(),
            first_listing: true,
            listed: HashSet::new(),
        }
    }

    fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.listed.clear(),
            watcher::Event::InitApply(pod) => {
                self.listed.extend(pod.metadata.uid.clone());
                self.update(pod, self.first_listing);
            }
            watcher::Event::InitDone => {
                // A pod missing from a fresh listing was deleted while the watch was down.
                let listed = std::mem::take(&mut self.listed);
                self.senders.retain(|uid, _| listed.contains(uid));
                self.first_listing = false;
            }
            watcher::Event::Apply(pod) => self.update(pod, false),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.senders.remove(uid);
                }
            }
        }
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a pod worker panicked");
            }
        }
    }

    fn update(&mut self, pod: Pod, adopted: bool) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        if let Some(sender) = self.senders.get(&uid) {
            sender.send_replace(pod);
            return;
        }
        tracing::debug!(namespace = ?pod.metadata.namespace, pod = ?pod.metadata.name, %uid, adopted, "new pod");
        let (sender, receiver) = watch::channel(pod);
        self.senders.insert(uid, sender);
        self.tasks.spawn(worker::run(self.ctx.clone(), receiver, adopted));
    }

    /// Waits up to `limit` for every worker to finish (they stop their processes on shutdown).
    async fn wait_all(&mut self, limit: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("some pod workers did not finish in time");
        }
    }
}
