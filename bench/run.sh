#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: whole-process throughput of barge-runner on
# bench/sentences.txt against sentence-transformers' encode() on the same sentences and threads,
# the worst cosine between the two, and the runner with the model skipped.
#   bench/run.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
MODEL="$(scripts/fetch-model.sh minilm)"
PY="$(scripts/ref-venv.sh)"
FEATURES="$(scripts/features.sh)"
# shellcheck disable=SC2086
cargo build --release --quiet -p barge-runner $FEATURES
echo "runner features: ${FEATURES:-default (no OpenBLAS)}"
RUNNER="$CARGO_TARGET_DIR/release/barge-runner"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK/requests.jsonl" <<'PY'
import json, sys
with open("bench/sentences.txt", encoding="utf-8") as f, open(sys.argv[1], "w") as out:
    for i, s in enumerate(l.rstrip("\n") for l in f if l.strip()):
        out.write(json.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/embeddings",
                              "body": {"input": s}}) + "\n")
PY
N=$(wc -l < "$WORK/requests.jsonl")

run() { # label, extra args...
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$RUNNER" run --model "$MODEL" --input "$WORK/requests.jsonl" \
    --output "$WORK/$label" --threads "$THREADS" --no-progress --log-format json "$@" 2>"$WORK/$label.log"
  t1=$(date +%s.%N)
  python3 -c "import sys; n,a,b,r=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]),int(sys.argv[4]); print(f'{sys.argv[5]:<28} {n} sentences in {b-a:6.2f} s = {n/(b-a):7.1f} sentences/s, peak RSS {r/1024:.0f} MiB')" \
    "$N" "$t0" "$t1" "$(cat "$WORK/rss")" "$label"
}

echo "threads: $THREADS, sentences: $N"
run barge-runner
run barge-runner-null-model --null-model
"$PY" bench/st_bench.py "$MODEL" bench/sentences.txt --threads "$THREADS" --out "$WORK/st.json" \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"{'sentence-transformers':<28} {r['sentences']} sentences in {r['seconds']:6.2f} s = {r['sentences_per_s']:7.1f} sentences/s (encode() only, model loaded)\")"
python3 - "$WORK/barge-runner/results.jsonl" "$WORK/st.json" <<'PY'
import json, math, sys
ours = [json.loads(l)["response"]["body"]["data"][0]["embedding"] for l in open(sys.argv[1])]
ref = json.load(open(sys.argv[2]))
def cos(a, b):
    return sum(x*y for x, y in zip(a, b)) / math.sqrt(sum(x*x for x in a) * sum(y*y for y in b))
c = [cos(a, b) for a, b in zip(ours, ref)]
print(f"worst cosine vs sentence-transformers: {min(c):.6f} (mean {sum(c)/len(c):.6f}, {len(c)} sentences)")
PY
