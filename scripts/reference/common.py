"""Shared helpers for the llama.cpp reference scripts (run with the venv from
scripts/reference/llama-venv.sh)."""
import json
import subprocess
from pathlib import Path

import jinja2.sandbox
import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "runner" / "tests" / "fixtures"


def model_path(arg=None, name="smollm2"):
    """The GGUF: the given path, else what `scripts/fetch-model.sh NAME` prints."""
    if arg:
        return str(arg)
    out = subprocess.run([str(ROOT / "scripts" / "fetch-model.sh"), name],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def detok(llm, ids):
    """Text of ids, special tokens written out."""
    return llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def tokenizer_case(llm, text, **fields):
    """One tokenizer fixture entry: the text, its ids (no BOS, markup as special tokens), the
    caller's extra fields, and the ids detokenized."""
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    return {"text": text, "ids": ids, **fields, "detokenized": detok(llm, ids)}


def greedy(llm, ids, n_gen, eos):
    """Eval ids from an empty context, then n_gen argmax steps (stop at eos). Returns the ids
    and each step's top-1 minus top-2 logit margin."""
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n_gen):
        logits = last_logits(llm)
        top2 = np.argsort(logits)[::-1][:2]
        tok = int(np.argmax(logits))
        out.append(tok)
        margins.append(round(float(logits[top2[0]] - logits[top2[1]]), 4))
        if tok == eos:
            break
        llm.eval([tok])
    return out, margins


def render_chat(llm, messages, add_generation_prompt=True):
    """Render the GGUF's own tokenizer.chat_template the way transformers does."""
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(llm.metadata["tokenizer.chat_template"])
    tok = lambda i: llm.detokenize([i], special=True).decode()
    return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=tok(llm.token_bos()), eos_token=tok(llm.token_eos()))


def write_fixture(path, header, lists):
    """JSON with the header keys first and each list's entries on one line each
    (compact ids, readable diffs)."""
    parts = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in header.items()]
    for key, entries in lists.items():
        body = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
        parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def last_logits(llm):
    """Logits of the last evaluated position, copied.  (With logits_all=False,
    llama-cpp-python's Llama.eval no longer fills llm.scores.)"""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()
