#!/usr/bin/env bash
# Reproduces the chat figures of docs/benchmarks.md: generated tokens/s of barge-runner on
# bench/chat_requests.jsonl (256 short chat requests, max_tokens 64, greedy) against llama.cpp
# (llama-cpp-python, same GGUF, same threads) answering them one at a time.
#   bench/chat.sh [THREADS] [LIMIT] [RUNNER FLAGS...]   (defaults 2 and all 256 requests)
# BARGE_BENCH_RUNNER_ONLY=1 skips the llama.cpp side (to compare runner settings quickly).
# Whole-process time for the runner (start, model load, I/O, checkpoints); llama.cpp's own
# prefill and decode time only. Peak RSS of both.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
LIMIT="${2:-256}"
shift $(( $# > 2 ? 2 : $# ))
export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
GGUF="$(scripts/fetch-model.sh smollm2)"
FEATURES="$(scripts/features.sh)"
# shellcheck disable=SC2086
cargo build --release --quiet --workspace --bins $FEATURES
RUNNER="$CARGO_TARGET_DIR/release/barge-runner"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
[[ -s bench/chat_requests.jsonl ]] || python3 bench/make_chat_requests.py
head -n "$LIMIT" bench/chat_requests.jsonl > "$WORK/requests.jsonl"
echo "runner features: ${FEATURES:-default (no OpenBLAS)}; threads: $THREADS; requests: $(wc -l < "$WORK/requests.jsonl"); runner flags: $*"

t0=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$WORK/rss" "$RUNNER" run --model "$GGUF" --input "$WORK/requests.jsonl" \
  --output "$WORK/out" --threads "$THREADS" --no-progress --log-format json "$@" 2>"$WORK/runner.log"
t1=$(date +%s.%N)
python3 - "$WORK" "$t0" "$t1" <<'PY'
import json, sys
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
m = json.load(open(f"{work}/out/manifest.json"))
stats = next(json.loads(l) for l in open(f"{work}/runner.log") if "generation stats" in l)
f = stats.get("fields", stats)
secs = t1 - t0
gen = m["tokens"]["completion"]
print(json.dumps({
    "side": "barge-runner", "requests": m["requestCounts"]["completed"], "generated_tokens": gen,
    "prompt_tokens": m["tokens"]["prompt"], "wall_seconds": round(secs, 2),
    "generated_tokens_per_second": round(gen / secs, 1),
    "engine_seconds": round(f["seconds"], 2), "forward_seconds": round(f["forward_seconds"], 2),
    "steps": f["steps"], "preemptions": f["preemptions"],
    "peak_rss_mib": round(int(open(f"{work}/rss").read()) / 1024),
}))
PY

[[ -n "${BARGE_BENCH_RUNNER_ONLY:-}" ]] && exit 0
PY="$(scripts/reference/llama-venv.sh)"
"$PY" bench/llamacpp_chat.py --model "$GGUF" --requests "$WORK/requests.jsonl" --threads "$THREADS"
