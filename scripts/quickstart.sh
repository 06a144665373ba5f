#!/usr/bin/env bash
# Runs a real batch on this machine: fetches all-MiniLM-L6-v2 into the cache, builds the
# runner, embeds examples/embeddings.jsonl and says where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."

export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
OUT="${1:-barge-quickstart-output}"

MODEL="$(scripts/fetch-model.sh minilm)"
FEATURES="$(scripts/features.sh)"
[[ -n "$FEATURES" ]] || echo "note: without libopenblas-dev the runner uses candle's slower CPU GEMM" >&2
echo "building barge-runner (the first build takes a while)..." >&2
# shellcheck disable=SC2086
cargo build --release --quiet -p barge-runner $FEATURES
"$CARGO_TARGET_DIR/release/barge-runner" run \
  --model "$MODEL" --input examples/embeddings.jsonl --output "$OUT" --overwrite
echo
echo "first result line (embedding cut short):"
head -c 300 "$OUT/results.jsonl"; echo " ..."
echo "errors (the example has two malformed lines on purpose):"
cat "$OUT/errors.jsonl"
