//! The node agent's errors: one variant per failing operation, the cause as its source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot find a Kubernetes client configuration (pass --kubeconfig or set KUBECONFIG)")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("cannot register node {node}")]
    RegisterNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot report the status of node {node}")]
    NodeStatus {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot remove the lifecycle taints of node {node}")]
    NodeTaints {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot renew the lease of node {node}")]
    Lease {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid --pod-ip-base")]
    PodIpBase(#[from] super::ip_pool::InvalidBase),
    #[error("cannot create state folder {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
