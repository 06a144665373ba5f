# shellcheck shell=bash disable=SC2034 # sourced by tests/testbed/up and down after lib.sh
# The testbed's real node: containerd and runc from Debian, the CNI bridge plugin, and the
# kubelet and kube-proxy built from k8s.io/kubernetes like the control plane. Pods run as
# containers from OCI images, on a bridge of their own; they reach the API server through the
# `kubernetes` Service (kube-proxy) and the testbed's S3 at the node's address, never through the
# host's loopback.

NODE_NAME=barge-node-0
# The pods' bridge and the node's address on it. The API server advertises this address (so the
# `kubernetes` Service leads here) and the kubelet serves logs on it. Traffic to it stays on this
# machine: the bridge has no uplink.
NODE_BRIDGE=barge0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
# The sandbox image every pod starts with; built here from Kubernetes' own pause.c, since no
# registry is reachable.
PAUSE_IMAGE=registry.k8s.io/pause:3.10
KUBELET_PORT=10250

NODE_DIR="$STATE/node"
CONTAINERD_SOCK="$NODE_DIR/containerd/containerd.sock"
KUBELET_ROOT="$NODE_DIR/kubelet"

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
containerd_ok() { ctr_ version >/dev/null; }

# The packages the node needs, installed when missing (CI and a fresh machine).
node_packages() {
  local missing=() cmd pkg
  for pair in containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
    ip:iproute2 buildah:buildah gcc:gcc; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]} with apt-get"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; }; } >&2
}

# The pause image, built once per Kubernetes version into the cache: a static pause from the
# k8s.io/kubernetes module's own source.
pause_archive() {
  local version archive
  version="$("$BIN/kube-apiserver" --version | awk '{print $2}')"
  archive="$BARGE_CACHE/testbed/images/pause-$version.oci.tar"
  if [[ ! -s "$archive" ]]; then
    local src work
    src="$(GOMODCACHE="$BARGE_CACHE/go/pkg/mod" GOFLAGS=-modcacherw go mod download -json "k8s.io/kubernetes@$version" \
      | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c"
    work="$(mktemp -d)"
    mkdir -p "$work/build/rootfs" "$work/context" "$(dirname "$archive")"
    gcc -Os -static -DVERSION="$version" -o "$work/build/rootfs/pause" "$src"
    printf 'FROM scratch\nCOPY --from=build /rootfs/ /\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/Dockerfile"
    buildah bud --quiet --layers=false -f "$work/Dockerfile" --build-context "build=$work/build" \
      -t "$PAUSE_IMAGE" "$work/context" >&2
    buildah push --quiet "$PAUSE_IMAGE" "oci-archive:$archive.tmp:$PAUSE_IMAGE" >&2
    mv -f "$archive.tmp" "$archive"
    rm -rf "$work"
  fi
  echo "$archive"
}

# Every pod container and sandbox lives in the kubelet's `kubepods` cgroups. Killing them there
# reaches processes that neither the shims nor the testbed's mark can (a container's process is
# started by runc with the pod's own environment).
kill_pods() {
  local dir pids
  for dir in /sys/fs/cgroup/{pids,memory,cpu,freezer}/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d "$dir" ]] || continue
    pids="$(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null
  done
  return 0
}

# Unmount what the kubelet and containerd left under the node's folder (pod volumes, container
# root filesystems, sandbox netns), deepest first, so the folder can be removed.
unmount_node() {
  [[ -d "$NODE_DIR" ]] || return 0
  local mnt
  # awk, not grep: no match must not fail the pipeline under pipefail.
  awk -v dir="$NODE_DIR/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done
  # runc's records of the killed containers (containerd's runc root for the k8s.io namespace).
  local id
  for id in $(runc --root /run/containerd/runc/k8s.io list -q 2>/dev/null); do
    runc --root /run/containerd/runc/k8s.io delete --force "$id" 2>/dev/null || true
  done
  # containerd keeps sandbox network namespaces under /run/netns (cni-<uuid>).
  for mnt in /run/netns/cni-*; do
    [[ -e "$mnt" ]] && { umount -l "$mnt" 2>/dev/null; rm -f "$mnt"; }
  done
  return 0
}

# The pods' bridge with the node's address, forwarding on, and bridged traffic through iptables
# (kube-proxy's Service rules must see a pod's packets to another pod on the same bridge).
node_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  mkdir -p "$NODE_DIR/cni"
  cat >"$NODE_DIR/cni/10-barge.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "barge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

start_containerd() {
  mkdir -p "$NODE_DIR/containerd"
  cat >"$NODE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM refuses a process a lower oom_score_adj than its parent's (the -998 a sandbox asks
  # for fails in runc with "Permission denied"): clamp to containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  # Images come from the testbed's archives (ctr import); none can be pulled here.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    # Imported images are never garbage-collected away from under a pod.
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
TOML
  start containerd containerd --config "$NODE_DIR/containerd/config.toml"
  wait_until containerd 30 containerd_ok
}

# import_image ARCHIVE: an OCI archive into the node's image store, under its own name.
import_image() {
  ctr_ images import --no-unpack=false "$1" >/dev/null 2>>"$(log_file containerd)" \
    || fail containerd "could not import $1"
}

start_kubelet() {
  mkdir -p "$KUBELET_ROOT"
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM mounts cgroup v1 (with a cgroup2 hybrid mount), which Kubernetes 1.35+ refuses unless
# told otherwise; containerd 1.6 answers no RuntimeConfig, so the driver is named here.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Only imported images exist: never collect them, never evict for a full disk on a test machine.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
containerLogMaxSize: 10Mi
nodeStatusReportFrequency: 10s
YAML
  start kubelet "$BIN/kubelet" --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$KUBELET_ROOT" --cert-dir="$NODE_DIR/kubelet-pki" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --node-labels="${NODE_LABELS:-}" --v=1
  wait_until kubelet 90 api_ok "/api/v1/nodes/$NODE_NAME"
}

start_kube_proxy() {
  cat >"$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack table sizes alone.
conntrack: {maxPerCore: 0, min: 0}
YAML
  start kube-proxy "$BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"
  wait_until kube-proxy 30 curl -sf -o /dev/null --max-time 2 http://127.0.0.1:10256/healthz
}

node_is_ready() {
  [[ "$("$BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
wait_node_ready() { wait_until kubelet 90 node_is_ready; }
