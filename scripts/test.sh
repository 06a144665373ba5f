#!/usr/bin/env bash
# The project's one test command: fetches the real model and builds the S3 server (both cached
# under $BARGE_CACHE), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"

BARGE_MINILM_DIR="$(scripts/fetch-model.sh minilm)"
BARGE_MINIO="$(scripts/build-minio.sh)"
export BARGE_MINILM_DIR BARGE_MINIO

# The tests cover the CPU path production uses: BERT's Linear layers through OpenBLAS.
FEATURES="$(scripts/features.sh)"
if [[ -z "$FEATURES" ]]; then
  echo "libopenblas is not installed (Debian/Ubuntu: apt-get install libopenblas-dev)" >&2
  exit 1
fi
# --release: the tests run the real model, and one optimised build serves tests and binaries.
# shellcheck disable=SC2086
cargo test --workspace --release $FEATURES "$@"
