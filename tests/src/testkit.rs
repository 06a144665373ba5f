//! Helpers for end-to-end tests against the testbed's real API server: a client from the
//! environment, a temporary namespace, waits with a timeout that say what they waited for, and a
//! dump of pods and events for failure messages.
//!
//! Set `BARGE_E2E_KEEP=1` to keep a test's namespace (and its node agent's state) for a look.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// The variable that points the e2e tests at a running testbed.
pub const KUBECONFIG_VAR: &str = "BARGE_E2E_KUBECONFIG";
/// How to bring the testbed up and run the tests against it.
pub const HOW_TO_RUN: &str = "run the tests through scripts/test.sh, which brings the testbed up \
    and sets it; or by hand:\n\
    \n    eval \"$(tests/testbed/up)\"\
    \n    BARGE_E2E_KUBECONFIG=$KUBECONFIG cargo test --release -p barge-e2e --test node_agent\
    \n    tests/testbed/down\n";

/// The testbed's kubeconfig. Panics, saying how to start the testbed, when it is not set: an
/// end-to-end test that silently passes without a cluster proves nothing.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os(KUBECONFIG_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!("{KUBECONFIG_VAR} is not set: this test needs a running API server; {HOW_TO_RUN}"),
    }
}

/// A client for the testbed named by [`kubeconfig`].
pub async fn client() -> Client {
    crate::install_crypto_provider();
    let path = kubeconfig();
    let file = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read {KUBECONFIG_VAR}={}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"))
}

/// Whether to keep what a test made, for a look after it (`BARGE_E2E_KEEP=1`).
pub fn keep() -> bool {
    std::env::var_os("BARGE_E2E_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A name unique to this test process: `prefix-<pid>-<millis>`.
pub fn unique_name(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or_default();
    format!("{prefix}-{}-{millis}", std::process::id())
}

/// Polls `probe` every 200 ms until it gives `Some`, for at most `timeout`. On timeout, panics
/// with `what` and the last value `probe` saw (its `Err`).
pub async fn wait_for<T, E: Debug, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace for one test, deleted by [`TestNamespace::delete`] unless [`keep`] says so.
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    /// Creates `prefix-…` and waits for its `default` ServiceAccount (pods need it).
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for("the namespace's default ServiceAccount", Duration::from_secs(30), || async {
            match accounts.get_opt("default").await {
                Ok(Some(sa)) => Ok(sa),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        Self { client: client.clone(), name }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Pods (phase, conditions, container states) and events, for a failure message.
    pub async fn dump(&self) -> String {
        let mut out = format!("--- namespace {} ---\n", self.name);
        match self.pods().list(&ListParams::default()).await {
            Ok(pods) => {
                for pod in pods {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let status = serde_json::to_string_pretty(&pod.status).unwrap_or_default();
                    out.push_str(&format!(
                        "pod {name} on {:?}:\n{status}\n",
                        pod.spec.and_then(|s| s.node_name)
                    ));
                }
            }
            Err(e) => out.push_str(&format!("cannot list pods: {e}\n")),
        }
        let events: Api<Event> = self.api();
        match events.list(&ListParams::default()).await {
            Ok(events) => {
                for e in events {
                    let object = e.involved_object.name.unwrap_or_default();
                    let (reason, message) = (e.reason.unwrap_or_default(), e.message.unwrap_or_default());
                    out.push_str(&format!("event {object}: {reason}: {message}\n"));
                }
            }
            Err(e) => out.push_str(&format!("cannot list events: {e}\n")),
        }
        out
    }

    pub async fn delete(self) {
        if keep() {
            eprintln!("keeping namespace {} (BARGE_E2E_KEEP)", self.name);
            return;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = namespaces.delete(&self.name, &DeleteParams::default()).await {
            eprintln!("cannot delete namespace {}: {e}", self.name);
        }
    }
}
