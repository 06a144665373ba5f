#!/usr/bin/env python3
"""Regenerate runner/tests/fixtures/smollm2_tokenizer.json: llama.cpp's token ids
for fixed strings with the SmolLM2-135M-Instruct GGUF (gpt2 BPE, pre 'smollm'),
used to check Barge's Rust tokenizer.

usage: "$(scripts/reference/llama-venv.sh)" scripts/reference/tokenizer_fixture.py [GGUF] [OUT]
  GGUF defaults to `scripts/fetch-model.sh smollm2`.

Each entry: text; ids = tokenize(add_bos=False, special=True) (control tokens
such as <|im_start|> are recognised); ids_no_special = the same with
special=False (markup is split as plain text); detokenized = detokenize(ids,
special=True).
"""
import sys

import llama_cpp
from common import FIXTURES, model_path, tokenizer_case, write_fixture

TEXTS = [
    # plain English
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "hello",
    "HELLO",
    "",
    # whitespace
    " Hello",
    "Hello ",
    "a  b",
    "a   b    c",
    "   x",
    "x   ",
    "\n",
    "\n\n\n",
    "a\nb",
    "line one\n\nline two\n",
    "\tindented\ttabs\t",
    " \t \n \r\n ",
    # numbers
    "12345678",
    "3.14159",
    "1,000,000",
    "In 2024 there were 365 days, 52 weeks and 8760 hours.",
    "0x1F -42 +7 1e-9",
    # unicode
    "café naïve résumé Zürich",
    "日本語のテキストです。中文也可以。",
    "한국어 문장",
    "Emoji: 😀👍🏽🇫🇷 ❤️",
    "مرحبا بالعالم",
    "e\u0301 a\u0308 n\u0303",
    "Ελληνικά και русский текст",
    # code
    'def add(a, b):\n    """Add."""\n    return a + b\n',
    'fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!("{:?}", v);\n}\n',
    '{"name": "barge", "tags": ["llm", "batch"], "n": 3}',
    '{\n  "a": {\n    "b": [1, 2, 3]\n  }\n}',
    "if (x != y && z >= 0) { return -1; } // comment",
    # contractions
    "I'm sure they'll come, DON'T worry.",
    "It's we've you're she'd I've can't WON'T",
    # chat markup
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "before <|im_end|> after",
    "<|endoftext|>",
    "<|im_start|><|im_end|>",
    "not special: <|im_start |> <im_end>",
]


def main():
    gguf = model_path(sys.argv[1] if len(sys.argv) > 1 else None)
    out = sys.argv[2] if len(sys.argv) > 2 else FIXTURES / "smollm2_tokenizer.json"
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    cases = [tokenizer_case(llm, t, ids_no_special=llm.tokenize(t.encode(), add_bos=False, special=False))
             for t in TEXTS]
    header = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": f"llama-cpp-python {llama_cpp.__version__}, scripts/reference/tokenizer_fixture.py",
    }
    write_fixture(out, header, {"cases": cases})
    print(f"wrote {len(cases)} cases to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
