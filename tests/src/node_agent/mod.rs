//! `barge-node-agent`: a small kubelet for Barge's test cluster.
//!
//! It registers a Node, keeps its Lease and Ready condition fresh, and runs every pod that the
//! real kube-scheduler binds to it as a local process (no containers, no images): the image
//! names a local binary (`--image`), the pod's env is resolved as the kubelet resolves it, its
//! emptyDir volumes and termination message file become folders and files under the agent's
//! state dir, and the pod's status is reported as the kubelet reports it.
//!
//! The tree: pure decisions in `expand`, `env`, `images`, `ip_pool`, `pod_dir`, `launch`,
//! `pod_status`, `node`, `termination`; the IO that applies them in `agent` (watch and
//! dispatch), `worker` (one pod's life), `process`, `pod_api`, `sources` and `heartbeat`.

pub mod agent;
pub mod cli;
pub mod env;
pub mod error;
pub mod expand;
pub mod heartbeat;
pub mod images;
pub mod ip_pool;
pub mod launch;
pub mod node;
pub mod pod_api;
pub mod pod_dir;
pub mod pod_status;
pub mod process;
pub mod sources;
pub mod termination;
pub mod worker;

#[cfg(test)]
mod fixtures;

pub use agent::run;
pub use cli::{Cli, Config};
pub use error::Error;

use k8s_openapi::jiff::Timestamp;

/// The field manager of everything the agent applies (Node, Lease, pod status).
pub const FIELD_MANAGER: &str = "barge-node-agent";

/// Now, to the second: API times have second precision, so comparing a status built now with
/// one read back stays exact.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}
