//! Registers the Node and keeps it alive: the Lease in `kube-node-lease` renewed every 10 s and
//! the Ready condition's heartbeat every 30 s, so that kube-controller-manager's node lifecycle
//! controller never marks the node NotReady nor taints it.
//!
//! Caveats: the agent applies its view with force; a condition another controller set (Ready
//! Unknown after a pause) is overwritten at the next heartbeat, as a kubelet would.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeSystemInfo};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::node::{self, LEASE_NAMESPACE, NodeConfig};
use super::{FIELD_MANAGER, now};

pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Every this many lease renewals, the node status is reported again.
const STATUS_EVERY_RENEWALS: u32 = 3;

/// A registered Node.
#[derive(Debug, Clone)]
pub struct Registration {
    pub uid: String,
    info: NodeSystemInfo,
}

/// Creates or updates the Node, reports it Ready, takes the Lease, and removes the lifecycle
/// taints (the API server's admission puts `not-ready` on every new Node; a NotReady spell of an
/// earlier run may have left `unreachable`).
pub async fn register(client: &Client, cfg: &NodeConfig) -> Result<Registration, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = nodes
        .patch(&cfg.name, &params, &Patch::Apply(node::node(cfg)))
        .await
        .map_err(|source| Error::RegisterNode { node: cfg.name.clone(), source })?;
    let uid = applied.metadata.uid.clone().unwrap_or_default();
    let reg = Registration { uid, info: node::system_info() };
    report_status(client, cfg, &reg).await?;
    renew_lease(client, cfg, &reg).await?;
    remove_lifecycle_taints(client, cfg).await?;
    tracing::info!(node = %cfg.name, gpus = cfg.gpus, "node registered and ready");
    Ok(reg)
}

/// Renews the lease and reports the status until `shutdown`; failures are logged and retried
/// at the next tick.
pub async fn run(client: Client, cfg: NodeConfig, mut reg: Registration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut renewals = 0u32;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        renewals += 1;
        if let Err(e) = renew_lease(&client, &cfg, &reg).await {
            tracing::warn!(error = %e, source = %source_of(&e), "heartbeat failed");
        }
        if !renewals.is_multiple_of(STATUS_EVERY_RENEWALS) {
            continue;
        }
        match report_status(&client, &cfg, &reg).await {
            Ok(()) => {}
            // Someone deleted the Node: register it again, as a kubelet does.
            Err(Error::NodeStatus { source: kube::Error::Api(status), .. }) if status.is_not_found() => {
                tracing::warn!(node = %cfg.name, "the Node was deleted; registering it again");
                match register(&client, &cfg).await {
                    Ok(fresh) => reg = fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, source = %source_of(&e), "registering the node failed")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, source = %source_of(&e), "node status update failed"),
        }
    }
}

fn source_of(e: &Error) -> String {
    std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
}

async fn report_status(client: &Client, cfg: &NodeConfig, reg: &Registration) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let fail = |source| Error::NodeStatus { node: cfg.name.clone(), source };
    let existing = nodes.get_status(&cfg.name).await.map_err(fail)?;
    let status = node::node_status(cfg, &reg.info, existing.status.as_ref(), now());
    let body = Node {
        metadata: kube::api::ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() },
        status: Some(status),
        ..Default::default()
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes.patch_status(&cfg.name, &params, &Patch::Apply(body)).await.map_err(fail)?;
    Ok(())
}

async fn renew_lease(client: &Client, cfg: &NodeConfig, reg: &Registration) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = node::lease(&cfg.name, &reg.uid, now());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    leases
        .patch(&cfg.name, &params, &Patch::Apply(lease))
        .await
        .map_err(|source| Error::Lease { node: cfg.name.clone(), source })?;
    Ok(())
}

async fn remove_lifecycle_taints(client: &Client, cfg: &NodeConfig) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let fail = |source| Error::NodeTaints { node: cfg.name.clone(), source };
    let current = nodes.get(&cfg.name).await.map_err(fail)?;
    let taints = current.spec.and_then(|s| s.taints).unwrap_or_default();
    let Some(kept) = node::without_lifecycle_taints(&taints) else { return Ok(()) };
    tracing::info!(node = %cfg.name, "node is Ready: removing its not-ready/unreachable taints");
    // The node lifecycle controller owns these taints (it writes them with updates), so a merge
    // patch of the whole list, not an apply of ours, is what removes them.
    let patch = serde_json::json!({ "spec": { "taints": kept } });
    nodes.patch(&cfg.name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(fail)?;
    Ok(())
}
