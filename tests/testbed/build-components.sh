#!/usr/bin/env bash
# Build the testbed's Kubernetes components from their Go modules into the Barge cache, keyed by
# version: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, the node's
# kubelet and kube-proxy, and helm.
# Already-built binaries are reused; a cold build takes a long while on two cores.
# Prints the bin folder on stdout; progress goes to stderr.
set -euo pipefail

# Pinned to a release that k8s-openapi's `v1_36` feature (the operator's) describes.
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
HELM_VERSION="${HELM_VERSION:-v3.20.2}"

CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
BIN="$CACHE/testbed/k8s-$K8S_VERSION-helm-$HELM_VERSION/bin"
K8S_BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# A build without the version stamp (see below) counts as missing: kubectl cannot talk version
# with it.
stamped() { [[ "$("$BIN/kube-apiserver" --version 2>/dev/null)" == "Kubernetes $K8S_VERSION" ]]; }
if [[ -x "$BIN/kube-apiserver" ]] && ! stamped; then rm -f "$BIN/kube-apiserver"; fi

missing=()
for b in "${K8S_BINS[@]}" helm; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi

export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOCACHE="$CACHE/go/build"
export GOFLAGS="-trimpath -modcacherw -buildvcs=false" CGO_ENABLED=0
mkdir -p "$BIN"

# --- Kubernetes and etcd: one module of ours, so they share one build graph -----------------------
# k8s.io/kubernetes points its k8s.io/* staging modules at local paths in its own go.mod; a module
# that depends on it must map each of them to the published v0.X.Y of the same release.
need_k8s=0
for b in "${K8S_BINS[@]}"; do [[ -x "$BIN/$b" ]] || need_k8s=1; done
if [[ $need_k8s -eq 1 ]]; then
  MOD="$CACHE/testbed/src-k8s-$K8S_VERSION"
  mkdir -p "$MOD/cmd/etcd"
  staging_version="v0.${K8S_VERSION#v1.}"
  k8s_gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  go_line="$(grep -m1 '^go ' "$k8s_gomod")"
  {
    echo "module barge.dev/testbed"
    echo
    echo "$go_line"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$k8s_gomod" \
      | while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    echo ")"
  } > "$MOD/go.mod"
  # Main packages cannot be imported; a build-tagged file still records them as dependencies.
  cat > "$MOD/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  # etcd's own main lives in a module with local replaces too; its server package has the entry
  # point, at the version Kubernetes itself was tested with.
  cat > "$MOD/cmd/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$MOD"
    echo "resolving k8s.io/kubernetes@$K8S_VERSION modules..." >&2
    go mod tidy >&2
    echo "building etcd and Kubernetes $K8S_VERSION (cold: tens of minutes on two cores)..." >&2
    tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
    # A plain `go build` leaves the version at v0.0.0-master+$Format:%H$, which `kubectl version`
    # refuses to parse and Helm hands to charts as .Capabilities.KubeVersion; stamp the release
    # the way Kubernetes' own build (hack/lib/version.sh) does. Link-time only: no recompiling.
    minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    ldflags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean"
    done
    go build -ldflags="$ldflags" -o "$tmp/" ./cmd/etcd k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >&2
    for b in "${K8S_BINS[@]}"; do mv -f "$tmp/$b" "$BIN/$b"; done
    rmdir "$tmp"
  )
fi

# --- helm: its own module graph (it pins its own client-go) -------------------------------------
if [[ ! -x "$BIN/helm" ]]; then
  echo "building helm.sh/helm/v3@$HELM_VERSION..." >&2
  GOBIN="$(mktemp -d "$BIN/.helm.XXXXXX")"
  GOBIN="$GOBIN" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv -f "$GOBIN/helm" "$BIN/helm"
  rmdir "$GOBIN"
fi

echo "$BIN"
