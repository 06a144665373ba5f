#!/usr/bin/env python3
"""Regenerate runner/tests/fixtures/smollm2_greedy.json: llama.cpp's greedy
(argmax, no penalties) continuations with the SmolLM2-135M-Instruct GGUF, used
to check Barge's Rust forward pass, chat template and decoding.

usage: "$(scripts/reference/llama-venv.sh)" scripts/reference/greedy_fixture.py [GGUF] [OUT]
  GGUF defaults to `scripts/fetch-model.sh smollm2`.

"chats": the GGUF's tokenizer.chat_template rendered with jinja2
(add_generation_prompt=True), tokenized with add_bos=False, special=True (the
GGUF has add_bos_token=false), then N_GEN argmax steps, stopping early only at
EOS (id 2).  "completions": raw text, no template, same procedure.  Per step,
"margins" holds top1 - top2 logit, so a test may tolerate near-ties.  Runs on
CPU with n_threads=2, n_batch=512: the prompt is one batch, then one token per
step.
"""
import os
import sys

# Before llama_cpp loads libgomp: spin-waiting OpenMP threads slow ~10x on a
# busy machine (results are the same either way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import llama_cpp  # noqa: E402
from common import FIXTURES, greedy, model_path, render_chat, write_fixture  # noqa: E402

N_GEN = 16
EOS = 2

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "What is 17 times 3?"}],
    [{"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "List five fruits, one per line."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Write a Rust function that adds two numbers."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    [{"role": "user", "content": "Translate to English: 'Ich habe Hunger.'"}],
    [{"role": "user", "content": "Give me a one-sentence summary of photosynthesis."}],
    [{"role": "user", "content": "Tell me a short joke."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a pirate. Always answer like a pirate."},
     {"role": "user", "content": "How are you today?"}],
    [{"role": "system", "content": "Answer with a single word."},
     {"role": "user", "content": "What color is grass?"}],
    [{"role": "user", "content": "My name is Ada."},
     {"role": "assistant", "content": "Nice to meet you, Ada! How can I help you today?"},
     {"role": "user", "content": "What is my name?"}],
    [{"role": "user", "content": "Explain what a hash map is in simple terms."}],
    [{"role": "user", "content": "Convert this JSON to YAML: {\"a\": 1, \"b\": [2, 3]}"}],
    [{"role": "user", "content": "Café, naïve, 日本 — what languages are these words from?"}],
]

COMPLETIONS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
]


def run(llm, prompt):
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    gen, margins = greedy(llm, ids, N_GEN, EOS)
    text = lambda ts: llm.detokenize(ts, special=True).decode("utf-8", errors="replace")
    return {
        "prompt": prompt,
        "prompt_ids": ids,
        "greedy_ids": gen,
        "greedy_tokens": [text([t]) for t in gen],
        "greedy_text": text(gen),
        "stopped_at_eos": gen[-1] == EOS,
        "margins": margins,
    }


def main():
    gguf = model_path(sys.argv[1] if len(sys.argv) > 1 else None)
    out = sys.argv[2] if len(sys.argv) > 2 else FIXTURES / "smollm2_greedy.json"
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=2, n_batch=512, seed=0,
                          logits_all=False, verbose=False)
    chats = [{"messages": m, **run(llm, render_chat(llm, m))} for m in CHATS]
    completions = [run(llm, p) for p in COMPLETIONS]
    header = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": f"llama-cpp-python {llama_cpp.__version__}, scripts/reference/greedy_fixture.py",
        "n_gen": N_GEN,
        "eos_id": EOS,
    }
    write_fixture(out, header, {"chats": chats, "completions": completions})
    for e in chats + completions:
        print(repr(e["prompt"][-40:]), "->", repr(e["greedy_text"]), file=sys.stderr)
    print(f"wrote {len(chats)} chats, {len(completions)} completions to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
