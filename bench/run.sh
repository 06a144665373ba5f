#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: whole-process throughput of barge-runner on
# bench/sentences.txt against sentence-transformers' encode() on the same sentences and threads,
# the worst cosine between the two, and the runner with the model skipped.
#   bench/run.sh [THREADS] [ROUNDS]   (defaults 2 and 3)
# The two sides run alternately, ROUNDS times each, because a shared VM's speed drifts by tens
# of percent between minutes: the per-round ratio is the figure to trust.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
ROUNDS="${2:-3}"
export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
MODEL="$(scripts/fetch-model.sh minilm)"
PY="$(scripts/ref-venv.sh)"
FEATURES="$(scripts/features.sh)"
# shellcheck disable=SC2086
cargo build --release --quiet -p barge-runner $FEATURES
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
echo "runner features: ${FEATURES:-default (no OpenBLAS)}; threads: $THREADS; sentences: $N; rounds: $ROUNDS"

runner() { # output-dir extra-args... ; prints "seconds peak-rss-kib"
  local out=$1; shift
  rm -rf "$out"
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$RUNNER" run --model "$MODEL" --input "$WORK/requests.jsonl" \
    --output "$out" --threads "$THREADS" --no-progress --log-format json "$@" 2>"$out.log"
  t1=$(date +%s.%N)
  echo "$(python3 -c "print($t1 - $t0)") $(cat "$WORK/rss")"
}

: >"$WORK/rounds"
for r in $(seq 1 "$ROUNDS"); do
  read -r rs rss < <(runner "$WORK/out")
  st=$("$PY" bench/st_bench.py "$MODEL" bench/sentences.txt --threads "$THREADS" --out "$WORK/st.json" 2>/dev/null \
       | python3 -c "import json,sys; print(json.load(sys.stdin)['seconds'])")
  echo "$rs $st $rss" >>"$WORK/rounds"
  python3 -c "import sys; n,a,b=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'round {sys.argv[4]}: barge-runner {n/a:6.1f}/s, sentence-transformers {n/b:6.1f}/s, ratio {b/a:.2f}')" "$N" "$rs" "$st" "$r"
done
read -r ns nrss < <(runner "$WORK/null" --null-model)

python3 - "$N" "$WORK/rounds" "$ns" "$nrss" <<'PY'
import statistics, sys
n = int(sys.argv[1])
rows = [list(map(float, l.split())) for l in open(sys.argv[2])]
med = lambda xs: statistics.median(xs)
print(f"median barge-runner (whole process):       {n / med([r[0] for r in rows]):7.1f} sentences/s, peak RSS {max(r[2] for r in rows) / 1024:.0f} MiB")
print(f"median sentence-transformers (encode only): {n / med([r[1] for r in rows]):7.1f} sentences/s")
print(f"median per-round ratio runner/ST:           {med([r[1] / r[0] for r in rows]):7.2f}x")
print(f"barge-runner --null-model:                  {n / float(sys.argv[3]):7.1f} requests/s, peak RSS {int(sys.argv[4]) / 1024:.0f} MiB")
PY
python3 - "$WORK/out/results.jsonl" "$WORK/st.json" <<'PY'
import json, math, sys
ours = [json.loads(l)["response"]["body"]["data"][0]["embedding"] for l in open(sys.argv[1])]
ref = json.load(open(sys.argv[2]))
def cos(a, b):
    return sum(x*y for x, y in zip(a, b)) / math.sqrt(sum(x*x for x in a) * sum(y*y for y in b))
c = [cos(a, b) for a, b in zip(ours, ref)]
print(f"worst cosine vs sentence-transformers: {min(c):.6f} (mean {sum(c)/len(c):.6f}, {len(c)} sentences)")
PY
