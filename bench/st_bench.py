#!/usr/bin/env python3
"""Reference throughput of sentence-transformers on CPU.

usage: python st_bench.py MODEL_DIR SENTENCES_FILE --threads N [--out FILE]
Prints {"sentences": n, "seconds": s, "sentences_per_s": r}; --out writes the
embeddings (JSON list of lists) for cosine comparison with Barge's output.
"""
import argparse
import json
import time

import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("sentences_file")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with open(args.sentences_file, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]

    model = SentenceTransformer(args.model_dir, device="cpu")
    model.encode(sentences[:32])  # warm-up: lazy init, allocator, thread pool

    t0 = time.perf_counter()
    emb = model.encode(sentences)  # default batch size (32)
    secs = time.perf_counter() - t0

    print(json.dumps({"sentences": len(sentences), "seconds": round(secs, 3),
                      "sentences_per_s": round(len(sentences) / secs, 1)}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(emb.tolist(), f)


if __name__ == "__main__":
    main()
