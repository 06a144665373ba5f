#!/usr/bin/env bash
# The project's one test command: fetches the real model, builds the S3 server and the test
# cluster's Kubernetes components (all cached under $BARGE_CACHE), builds the binaries, brings the
# test cluster up (tests/testbed/up), runs every test of the workspace against it, and takes the
# cluster down again.
set -euo pipefail
cd "$(dirname "$0")/.."

export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"

BARGE_MINILM_DIR="$(scripts/fetch-model.sh minilm)"
BARGE_SMOLLM2_GGUF="$(scripts/fetch-model.sh smollm2)"
BARGE_GEMMA3_GGUF="$(scripts/fetch-model.sh gemma3)"
BARGE_MINIO="$(scripts/build-minio.sh)"
export BARGE_MINILM_DIR BARGE_SMOLLM2_GGUF BARGE_GEMMA3_GGUF BARGE_MINIO
tests/testbed/build-components.sh >/dev/null

# Tests that load the model in-process (not through the runner binary, which does this itself)
# get OpenBLAS's AVX kernels too: Debian 12's OpenBLAS does not recognise recent Xeons.
if [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
  if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
# The tests cover the CPU path production uses: BERT's Linear layers through OpenBLAS.
FEATURES="$(scripts/features.sh)"
if [[ -z "$FEATURES" ]]; then
  echo "libopenblas is not installed (Debian/Ubuntu: apt-get install libopenblas-dev)" >&2
  exit 1
fi
# --release: the tests run the real model, and one optimised build serves tests and binaries.
# The end-to-end tests run the operator, runner and node agent binaries, so build them first.
# shellcheck disable=SC2086
cargo build --release --workspace --bins $FEATURES

# The project's own images, built from this checkout (no registry): the test cluster's node runs
# every runner, finalize and operator pod in a container from them.
IMAGES_OUT="$(scripts/build-images.sh)"
mapfile -t IMAGES <<<"$IMAGES_OUT"
# shellcheck source=/dev/null
source "$BARGE_CACHE/images/refs.env"
BARGE_E2E_RUNNER_IMAGE="$BARGE_RUNNER_IMAGE" BARGE_E2E_OPERATOR_IMAGE="$BARGE_OPERATOR_IMAGE"
export BARGE_E2E_RUNNER_IMAGE BARGE_E2E_OPERATOR_IMAGE
# A real node: containerd, runc, CNI, the kubelet and kube-proxy (tests/testbed/node.sh).
export BARGE_TESTBED_NODE=kubelet BARGE_TESTBED_IMAGES="${IMAGES[*]}"
# A control plane that cannot start fails the run: `up` exits non-zero and says which part failed.
# Assigned first: `eval "$(up)"` alone would ignore a failed `up` and go on without a cluster.
TESTBED_ENV="$(tests/testbed/up)"
eval "$TESTBED_ENV"
trap 'tests/testbed/down' EXIT
kubectl apply --server-side -f crds/barge.dev_batchjobs.yaml >/dev/null
kubectl wait --for=condition=Established crd/batchjobs.barge.dev --timeout=60s >/dev/null
export BARGE_E2E_KUBECONFIG="$KUBECONFIG"

# shellcheck disable=SC2086
cargo test --workspace --release $FEATURES "$@"
