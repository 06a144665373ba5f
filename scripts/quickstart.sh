#!/usr/bin/env bash
# Runs real batches on this machine: fetches all-MiniLM-L6-v2 and SmolLM2-135M-Instruct into the
# cache, builds the runner, embeds examples/embeddings.jsonl, answers examples/chat.jsonl and
# says where the results are.
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

# The same runner serves chat: SmolLM2-135M-Instruct (a 4-bit GGUF) answers examples/chat.jsonl.
GGUF="$(scripts/fetch-model.sh smollm2)"
"$CARGO_TARGET_DIR/release/barge-runner" run \
  --model "$GGUF" --input examples/chat.jsonl --output "$OUT/chat" --overwrite
echo
echo "chat answers (custom_id: text):"
python3 - "$OUT/chat/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    body = r["response"]["body"]
    choice = body["choices"][0]
    text = choice.get("message", {}).get("content", choice.get("text"))
    print(f"  {r['custom_id']}: {text!r} ({choice['finish_reason']})")
PY
echo "chat errors (two lines are wrong on purpose):"
cat "$OUT/chat/errors.jsonl"
