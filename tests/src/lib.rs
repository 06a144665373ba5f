//! Barge's test cluster: the node agent that plays the kubelet, and helpers for end-to-end tests
//! against a real API server.

pub mod fault_proxy;
pub mod node_agent;
pub mod testkit;

/// Installs rustls' ring crypto provider for this process, once, before any Kubernetes client is
/// built. A workspace build enables both of rustls' providers (ring through kube, aws-lc-rs
/// through the AWS SDK), and rustls then refuses to pick one by itself.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
