//! The Node this agent registers and its Lease, built as pure functions of the agent's settings.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

/// The address pods see as their host's (`status.hostIP`) and the node's InternalIP.
pub const HOST_IP: &str = "127.0.0.1";
pub const KUBELET_VERSION: &str = "v1.36.3";
pub const MAX_PODS: u32 = 110;
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Taints the node lifecycle controller puts on a node that is not (or no longer) Ready.
pub const LIFECYCLE_TAINTS: [&str; 2] = ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"];

/// What the node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub gpus: u32,
    pub gpu_product: String,
    /// Extra labels; they override the standard ones.
    pub labels: BTreeMap<String, String>,
}

/// The Node object (metadata and labels; the status goes through `nodes/status`).
pub fn node(cfg: &NodeConfig) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        // A zone keeps the EndpointSlice controller's topology cache from complaining about
        // the node at every heartbeat, as it does for a node without one.
        (ZONE_LABEL.to_string(), "barge-test-a".to_string()),
        (REGION_LABEL.to_string(), "barge-test".to_string()),
    ]);
    if !cfg.gpu_product.is_empty() {
        labels.insert(GPU_PRODUCT_LABEL.into(), cfg.gpu_product.clone());
    }
    labels.extend(cfg.labels.clone());
    Node {
        metadata: ObjectMeta { name: Some(cfg.name.clone()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    }
}

/// The node's status: capacity, a Ready condition with `now` as its heartbeat, addresses and
/// system info. A condition keeps its `lastTransitionTime` from `existing` while its status stays.
pub fn node_status(
    cfg: &NodeConfig,
    info: &NodeSystemInfo,
    existing: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cfg.cpu.clone())),
        ("memory".to_string(), Quantity(cfg.memory.clone())),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
        (GPU_RESOURCE.to_string(), Quantity(cfg.gpus.to_string())),
    ]);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let old = existing.and_then(|s| s.conditions.as_ref()).into_iter().flatten();
        let since = old
            .filter(|c| c.type_ == kind && c.status == status)
            .find_map(|c| c.last_transition_time.clone());
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since.unwrap_or(Time(now))),
        }
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: HOST_IP.into() },
            NodeAddress { type_: "Hostname".into(), address: cfg.name.clone() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(info.clone()),
        ..Default::default()
    }
}

/// The node's heartbeat Lease, owned by the Node so that it goes when the Node goes.
pub fn lease(node_name: &str, node_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: node_uid.into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.into()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// `taints` without the lifecycle taints, or `None` when there are none to remove.
pub fn without_lifecycle_taints(taints: &[Taint]) -> Option<Vec<Taint>> {
    let kept: Vec<Taint> =
        taints.iter().filter(|t| !LIFECYCLE_TAINTS.contains(&t.key.as_str())).cloned().collect();
    (kept.len() != taints.len()).then_some(kept)
}

/// This machine's architecture as Kubernetes names it (Go's GOARCH).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// System info read from this machine where it can be, and plausible where it cannot.
pub fn system_info() -> NodeSystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path).map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty())
    };
    let os_image = read("/etc/os-release").and_then(|text| {
        text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
    });
    let machine_id = read("/etc/machine-id").unwrap_or_else(|| "barge-test-node".into());
    NodeSystemInfo {
        architecture: go_arch().into(),
        boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
        container_runtime_version: format!("barge://{}", env!("CARGO_PKG_VERSION")),
        kernel_version: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.into(),
        system_uuid: machine_id.clone(),
        machine_id,
        operating_system: "linux".into(),
        os_image: os_image.unwrap_or_else(|| "Linux".into()),
        swap: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "barge-node-0".into(),
            cpu: "16".into(),
            memory: "64Gi".into(),
            gpus: 8,
            gpu_product: "NVIDIA-H100-80GB-HBM3".into(),
            labels: BTreeMap::from([("pool".to_string(), "gpu".to_string())]),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid time")
    }

    #[test]
    fn the_node_is_labelled_like_a_gpu_node() {
        let labels = node(&cfg()).metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/hostname"], "barge-node-0");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels[GPU_PRODUCT_LABEL], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(labels["pool"], "gpu");
    }

    #[test]
    fn the_status_offers_the_configured_resources_and_is_ready() {
        let s = node_status(&cfg(), &system_info(), None, t(5));
        let alloc = s.allocatable.expect("allocatable");
        assert_eq!(alloc[GPU_RESOURCE], Quantity("8".into()));
        assert_eq!(alloc["pods"], Quantity("110".into()));
        assert_eq!(alloc["memory"], Quantity("64Gi".into()));
        let ready = s.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(s.node_info.expect("info").kubelet_version, KUBELET_VERSION);
    }

    #[test]
    fn a_heartbeat_moves_only_the_heartbeat_time() {
        let first = node_status(&cfg(), &system_info(), None, t(5));
        let next = node_status(&cfg(), &system_info(), Some(&first), t(35));
        let ready = next.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.last_heartbeat_time, Some(Time(t(35))));
        assert_eq!(ready.last_transition_time, Some(Time(t(5))));
    }

    #[test]
    fn the_lease_is_held_by_the_node_and_owned_by_it() {
        let l = lease("barge-node-0", "uid-1", t(7));
        assert_eq!(l.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        assert_eq!(l.metadata.owner_references.expect("owner")[0].uid, "uid-1");
        let spec = l.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("barge-node-0"));
        assert_eq!(spec.renew_time, Some(MicroTime(t(7))));
    }

    #[test]
    fn only_lifecycle_taints_are_removed() {
        let taint = |key: &str| Taint { key: key.into(), effect: "NoSchedule".into(), ..Default::default() };
        let taints =
            [taint("node.kubernetes.io/not-ready"), taint("gpu"), taint("node.kubernetes.io/unreachable")];
        assert_eq!(without_lifecycle_taints(&taints), Some(vec![taint("gpu")]));
        assert_eq!(without_lifecycle_taints(&[taint("gpu")]), None);
    }
}
