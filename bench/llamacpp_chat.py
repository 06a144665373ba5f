#!/usr/bin/env python3
"""Reference single-stream chat throughput of llama.cpp (llama-cpp-python) on CPU.

Runs the requests of an OpenAI batch file (default bench/chat_requests.jsonl,
made by bench/make_chat_requests.py) one at a time, as a single user would:
the GGUF's chat template, greedy (argmax, no penalties), up to max_tokens,
stopping at EOS.  Prefill (prompt eval) and decode are timed apart; EOS is not
counted as a generated token.  One untimed warm-up request runs first.

usage: "$(scripts/reference/llama-venv.sh)" bench/llamacpp_chat.py [--model GGUF]
         [--requests FILE] [--limit N] [--threads N] [--out FILE]
Prints one JSON object; --out writes per-request outputs (JSONL) for comparison.
On a busy machine set OMP_WAIT_POLICY=PASSIVE: llama.cpp's spinning OpenMP
threads otherwise run ~10x slower with --threads 2 on 2 loaded cores.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts" / "reference"))
from common import last_logits, model_path, render_chat  # noqa: E402


def generate(llm, ids, max_tokens):
    """Returns (generated ids without EOS, prefill seconds, decode seconds, decode evals)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    out, evals = [], 0
    while len(out) < max_tokens:
        tok = int(np.argmax(last_logits(llm)))
        if tok == llm.token_eos():
            break
        out.append(tok)
        if len(out) < max_tokens:
            llm.eval([tok])
            evals += 1
    return out, t1 - t0, time.perf_counter() - t1, evals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--requests", default=str(HERE / "chat_requests.jsonl"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()

    with open(args.requests, encoding="utf-8") as f:
        reqs = [json.loads(line) for line in f if line.strip()][:args.limit]
    llm = llama_cpp.Llama(model_path=model_path(args.model), n_ctx=2048, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, seed=0, verbose=False)
    prompts = [llm.tokenize(render_chat(llm, r["body"]["messages"]).encode(),
                            add_bos=False, special=True) for r in reqs]
    generate(llm, prompts[0], 8)  # warm-up

    n_prompt = n_gen = n_evals = 0
    t_prefill = t_decode = 0.0
    results = []
    t0 = time.perf_counter()
    for r, ids in zip(reqs, prompts):
        out, tp, td, ev = generate(llm, ids, r["body"].get("max_tokens", 64))
        n_prompt += len(ids); n_gen += len(out); n_evals += ev
        t_prefill += tp; t_decode += td
        if args.out:
            results.append({"custom_id": r["custom_id"], "prompt_tokens": len(ids),
                            "completion_tokens": len(out), "ids": out,
                            "text": llm.detokenize(out).decode("utf-8", errors="replace")})
    wall = time.perf_counter() - t0

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in results)
    print(json.dumps({
        "engine": f"llama-cpp-python {llama_cpp.__version__}",
        "requests": len(reqs), "threads": args.threads,
        "prompt_tokens": n_prompt, "generated_tokens": n_gen,
        "wall_s": round(wall, 3),
        "generated_tokens_per_s": round(n_gen / wall, 2),
        "prefill_s": round(t_prefill, 3), "prefill_tokens_per_s": round(n_prompt / t_prefill, 1),
        "decode_s": round(t_decode, 3), "decode_evals": n_evals,
        "decode_tokens_per_s": round(n_evals / t_decode, 2) if t_decode else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
