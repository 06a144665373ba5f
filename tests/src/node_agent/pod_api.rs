//! The two writes the agent makes to a pod: its status and its final removal.
//!
//! Guarantees: both are retried until they succeed, the pod is gone, or the agent shuts down;
//! both name the pod's UID, so that a new pod with the same name (a shard's replacement) is
//! never touched by the worker of the old one.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::FIELD_MANAGER;

/// Why a pod's worker stops before its pod's life is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The pod no longer exists (or its name now belongs to another pod).
    Gone,
    /// The agent is shutting down.
    Shutdown,
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Writes to one pod, by name and UID.
pub struct PodApi {
    api: Api<Pod>,
    namespace: String,
    name: String,
    uid: String,
    shutdown: CancellationToken,
    /// The last status applied, so that an unchanged status is not sent again.
    last: Option<PodStatus>,
}

impl PodApi {
    pub fn new(client: Client, pod: &Pod, shutdown: CancellationToken) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            shutdown,
            last: None,
        }
    }

    /// Applies `status` (server-side apply, this agent's field manager, forced).
    pub async fn report(&mut self, status: PodStatus) -> Result<(), Stop> {
        if self.last.as_ref() == Some(&status) {
            return Ok(());
        }
        let body = Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                // A precondition: the API server refuses the patch if the name's pod has another UID.
                uid: Some(self.uid.clone()),
                ..Default::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.retry("report status", |api, name| {
            let (params, body) = (params.clone(), body.clone());
            async move { api.patch_status(&name, &params, &Patch::Apply(body)).await.map(drop) }
        })
        .await?;
        self.last = Some(status);
        Ok(())
    }

    /// Removes the pod for good (grace period 0, this UID only), as the kubelet does once its
    /// containers have stopped. A pod that is already gone counts as removed.
    pub async fn delete_now(&self) -> Result<(), Stop> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match self
            .retry("delete", |api, name| {
                let params = params.clone();
                async move { api.delete(&name, &params).await.map(drop) }
            })
            .await
        {
            Ok(()) | Err(Stop::Gone) => {
                tracing::info!(namespace = %self.namespace, pod = %self.name, "pod removed");
                Ok(())
            }
            Err(Stop::Shutdown) => Err(Stop::Shutdown),
        }
    }

    async fn retry<F, Fut>(&self, what: &str, op: F) -> Result<(), Stop>
    where
        F: Fn(Api<Pod>, String) -> Fut,
        Fut: Future<Output = kube::Result<()>>,
    {
        let mut delay = FIRST_RETRY;
        loop {
            let err = match op(self.api.clone(), self.name.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if self.is_gone(&err).await {
                return Err(Stop::Gone);
            }
            tracing::warn!(namespace = %self.namespace, pod = %self.name, error = %err, "cannot {what}; retrying");
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Whether `err` means this pod no longer exists: not found, or a conflict because the name
    /// now belongs to a pod with another UID.
    async fn is_gone(&self, err: &kube::Error) -> bool {
        let kube::Error::Api(status) = err else { return false };
        if status.is_not_found() {
            return true;
        }
        if !(status.is_conflict() || status.is_invalid()) {
            return false;
        }
        match self.api.get_opt(&self.name).await {
            Ok(None) => true,
            Ok(Some(pod)) => pod.metadata.uid.as_deref() != Some(self.uid.as_str()),
            Err(_) => false,
        }
    }
}
