"""Writes runner/tests/fixtures/smollm2_logits.json: llama.cpp's largest logits, as exact f32
values, after each greedy fixture prompt (read in one batch) and after its first generated
token (read alone), so a test can hold Barge's arithmetic to llama.cpp's bit for bit.

Run with the venv from scripts/reference/llama-venv.sh:
    ~/.cache/barge/refvenv/bin/python scripts/reference/logits_fixture.py [GGUF] [OUT]

The numbers are those of llama.cpp's CPU backend built for an AVX-512 machine (the venv
script builds with -march=native): other builds add in other orders.
"""
import json
import sys

import llama_cpp
import numpy as np

from common import FIXTURES, last_logits, model_path, write_fixture

TOP = 8


def top(logits):
    ids = np.argsort(logits)[::-1][:TOP]
    # float(np.float32) is exact, and JSON's shortest repr reads back to the same f32.
    return [[int(i), float(logits[i])] for i in ids]


def main():
    gguf = model_path(sys.argv[1] if len(sys.argv) > 1 else None)
    out = sys.argv[2] if len(sys.argv) > 2 else FIXTURES / "smollm2_logits.json"
    greedy = json.loads((FIXTURES / "smollm2_greedy.json").read_text())
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=2, n_batch=512, seed=0,
                          logits_all=False, verbose=False)
    entries = []
    for e in greedy["chats"] + greedy["completions"]:
        ids = e["prompt_ids"]
        llm.reset()
        llm.eval(ids)
        after_prompt = top(last_logits(llm))
        first = int(after_prompt[0][0])
        llm.eval([first])
        entries.append({"prompt_ids": ids, "after_prompt": after_prompt, "next": first,
                        "after_next": top(last_logits(llm))})
    header = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": f"llama-cpp-python {llama_cpp.__version__}, scripts/reference/logits_fixture.py",
        "top": TOP,
    }
    write_fixture(out, header, {"entries": entries})
    print(f"wrote {len(entries)} entries to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
