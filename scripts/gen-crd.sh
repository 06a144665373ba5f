#!/usr/bin/env bash
# Regenerates the BatchJob CRD from the Rust types (operator/api/src/batchjob.rs) into crds/ and
# the Helm chart. A test (operator/src/crd.rs) fails when either copy drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
cargo run --quiet --release -p barge-operator -- crd > crds/barge.dev_batchjobs.yaml
mkdir -p charts/barge/crds-generated
cp crds/barge.dev_batchjobs.yaml charts/barge/crds-generated/barge.dev_batchjobs.yaml
echo "wrote crds/barge.dev_batchjobs.yaml and charts/barge/crds-generated/barge.dev_batchjobs.yaml" >&2
