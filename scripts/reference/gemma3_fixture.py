#!/usr/bin/env python3
"""Regenerate runner/tests/fixtures/gemma3.json: llama.cpp's token ids and greedy
(argmax, no penalties) continuations with the Gemma 3 270M GGUF (Q4_K_M), used
to check Barge's Rust SentencePiece tokenizer and Gemma 3 forward pass.

usage: "$(scripts/reference/llama-venv.sh)" scripts/reference/gemma3_fixture.py [GGUF] [OUT]
  GGUF defaults to `scripts/fetch-model.sh gemma3`.

"tokenizer": each entry has text; ids = tokenize(add_bos=False, special=True)
(control tokens such as <start_of_turn> are recognised); ids_bos = the same
with add_bos=True (the GGUF has add_bos_token=true, BOS id 2); detokenized =
detokenize(ids, special=True).  Tokenized with vocab_only=True.

"completions": raw text (the GGUF has no chat template), tokenized with
add_bos=True, special=True, then N_GEN argmax steps, stopping early only at EOS
(id 1, kept as the last id).  Per step, "margins" holds top1 - top2 logit, so a
test may tolerate near-ties.  Runs on CPU with n_threads=2, n_batch=512 (flash
attention off, f16 KV cache): the prompt is one batch, then one token per step.
"""
import os
import sys

# Before llama_cpp loads libgomp: spin-waiting OpenMP threads slow ~10x on a
# busy machine (results are the same either way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import llama_cpp  # noqa: E402
from common import FIXTURES, detok, greedy, model_path, tokenizer_case, write_fixture  # noqa: E402

N_GEN = 16
EOS = 1

TEXTS = [
    # plain English
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "hello HELLO Hello",
    "",
    # whitespace
    " Hello",
    "Hello ",
    "a  b",
    "a   b    c",
    "   x",
    "\n",
    "\n\n\n",
    "line one\n\nline two\n",
    "\tindented\ttabs\t",
    " \t \n \r\n ",
    # numbers
    "12345678",
    "3.14159 and 1,000,000",
    "In 2024 there were 365 days, 52 weeks and 8760 hours.",
    # unicode
    "café naïve résumé Zürich",
    "日本語のテキストです。中文也可以。",
    "Emoji: 😀👍🏽🇫🇷 ❤️",
    "مرحبا بالعالم",
    "e\u0301 a\u0308 n\u0303",
    # code
    'def add(a, b):\n    """Add."""\n    return a + b\n',
    'fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!("{:?}", v);\n}\n',
    '{"name": "barge", "tags": ["llm", "batch"], "n": 3}',
    # chat markup
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>",
    "text <bos> more <eos> end",
    "not special: <start_of_turn > <end_of_turn",
]

COMPLETIONS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "In 1492,",
    "The best way to learn a language is",
    "List of fruits:\n1.",
]


def tokenizer_cases(gguf):
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    return [tokenizer_case(llm, t, ids_bos=llm.tokenize(t.encode(), add_bos=True, special=True))
            for t in TEXTS]


def completion(llm, prompt):
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    gen, margins = greedy(llm, ids, N_GEN, EOS)
    return {
        "prompt": prompt,
        "prompt_ids": ids,
        "greedy_ids": gen,
        "greedy_tokens": [detok(llm, [t]) for t in gen],
        "greedy_text": detok(llm, gen),
        "stopped_at_eos": gen[-1] == EOS,
        "margins": margins,
    }


def main():
    gguf = model_path(sys.argv[1] if len(sys.argv) > 1 else None, "gemma3")
    out = sys.argv[2] if len(sys.argv) > 2 else FIXTURES / "gemma3.json"
    cases = tokenizer_cases(gguf)
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=2, n_batch=512, seed=0,
                          logits_all=False, verbose=False)
    completions = [completion(llm, p) for p in COMPLETIONS]
    header = {
        "model": os.path.basename(gguf),
        "generator": f"llama-cpp-python {llama_cpp.__version__}, scripts/reference/gemma3_fixture.py",
        "n_gen": N_GEN,
        "eos_id": EOS,
    }
    write_fixture(out, header, {"tokenizer": cases, "completions": completions})
    for e in completions:
        print(repr(e["prompt"]), "->", repr(e["greedy_text"]), file=sys.stderr)
    print(f"wrote {len(cases)} tokenizer cases, {len(completions)} completions to {out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
