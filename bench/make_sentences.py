#!/usr/bin/env python3
"""Build bench/sentences.txt: realistic English text lines for embedding benchmarks.

No network: the prose comes from what is installed locally -- the Python
standard library (language-reference text in pydoc_data.topics, plus
module/class/function docstrings read with `ast`, never imported) and the doc
comments of the Go standard library.  Sentences are cleaned and filtered to
plain prose; single doc sentences average only ~20 tokens, so a line is 1..n
consecutive sentences of one paragraph (like a short passage).  Lines are
deduplicated and sampled with a fixed seed so that MiniLM token counts (incl.
[CLS]/[SEP]) span 6..120 with a mean of 50.  Deterministic for a given CPython
and Go version (generated with CPython 3.11.7 and Go 1.26.8).

usage: python make_sentences.py [MODEL_DIR] [OUT]   (needs `tokenizers`, e.g. venv-ref)
"""
import ast
import itertools
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pydoc_data.topics
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
N_WANT = 2560
MIN_TOK, MAX_TOK, TARGET_MEAN = 6, 120, 50
SEED = 20240601


def stdlib_texts():
    for key in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[key]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def go_texts():
    """Doc comments of the Go standard library (Go is needed for MinIO anyway)."""
    root = Path(subprocess.check_output(["go", "env", "GOROOT"], text=True).strip()) / "src"
    for path in sorted(root.rglob("*.go")):
        rel = path.relative_to(root).parts
        if path.name.endswith("_test.go") or {"testdata", "vendor", "cmd"} & set(rel):
            continue
        src = path.read_text(encoding="utf-8", errors="replace")
        if "DO NOT EDIT" in src[:1000]:  # generated code: repetitive boilerplate comments
            continue
        block = []
        for line in src.split("\n") + [""]:
            line = line.strip()
            if line.startswith("//") and not line.startswith(("//go:", "//line", "// +build")):
                block.append(line[3:] if line.startswith("// ") else line[2:])
            elif block:
                if not block[0].startswith("Copyright"):
                    yield "\n".join(block)
                block = []


def paragraphs(text):
    """Prose paragraphs only: drop indented blocks (code, grammar), headings, lists, tables."""
    for para in re.split(r"\n\s*\n", text):
        lines = para.split("\n")
        if any(l.startswith((" ", "\t", ">>>", "*", "-", "+", "=", "|", "#")) for l in lines):
            continue
        yield " ".join(l.strip() for l in lines)


# Split after . ! ? when the next sentence starts with a capital letter.
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Prose: capitalised start, ends with a full stop, only ordinary characters.
CLEAN = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-./%?!\u2019\u201c\u201d]*[a-z0-9)\"'\u2019\u201d][.!?]$")
CODEY = re.compile(r"[_=<>{}\[\]`\\@#*]|\w\.\w+\(|\s{2,}|^\w+:|\b(?:self|cls)\b")


def is_prose(s):
    words = s.split()
    return (len(words) >= 4 and CLEAN.match(s) is not None and CODEY.search(s) is None
            and sum(w.strip(",.;:()\"'").isalpha() for w in words) >= 0.8 * len(words)
            and s.count("(") == s.count(")") and s.count('"') % 2 == 0)


def runs():
    """Maximal runs of consecutive prose sentences within one paragraph."""
    for text in itertools.chain(stdlib_texts(), go_texts()):
        for para in paragraphs(text):
            para = re.sub(r"\*(\w[^*]*?)\*", r"\1", para)  # reST *emphasis* -> plain
            run = []
            for s in SPLIT.split(para):
                s = s.strip()
                if is_prose(s):
                    run.append(s)
                elif run:
                    yield run
                    run = []
            if run:
                yield run


def chunks(tok, rng):
    """Lines of 1..n consecutive sentences grown greedily towards a random target length.

    Single docstring sentences average only ~20 tokens, so to reach the ~50
    token mean of typical embedding inputs, neighbouring sentences of the same
    paragraph are joined (like a short passage / RAG chunk)."""
    for run in runs():
        lens = [len(e.ids) - 2 for e in tok.encode_batch(run)]  # without [CLS]/[SEP]
        i = 0
        while i < len(run):
            target = rng.randint(MIN_TOK, MAX_TOK)
            j, n = i + 1, lens[i]
            while j < len(run) and n + lens[j] <= target - 2:
                n += lens[j]
                j += 1
            yield " ".join(run[i:j])
            i = j


def main():
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(subprocess.check_output(
        [str(HERE.parent / "scripts" / "fetch-model.sh"), "minilm"], text=True).strip())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "sentences.txt"

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()

    rng = random.Random(SEED)
    seen, pool = set(), []
    for s in chunks(tok, rng):
        key = s.lower()
        if key not in seen:
            seen.add(key)
            pool.append(s)
    counts = [len(e.ids) for e in tok.encode_batch(pool, add_special_tokens=True)]
    pool = [(s, n) for s, n in zip(pool, counts) if MIN_TOK <= n <= MAX_TOK]

    # Natural docstring sentences are short; weight longer ones up (w = n^k) so
    # the sample mean lands near TARGET_MEAN.  Efraimidis-Spirakis weighted
    # sampling without replacement: keys u^(1/w), take the largest.
    us = [rng.random() for _ in pool]
    def sample(k):
        keyed = sorted(range(len(pool)), key=lambda i: us[i] ** (1.0 / pool[i][1] ** k), reverse=True)
        return [pool[i] for i in keyed[:N_WANT]]
    lo, hi = -4.0, 4.0
    for _ in range(30):   # bisect the exponent for the target mean
        k = (lo + hi) / 2
        mean = sum(n for _, n in sample(k)) / N_WANT
        lo, hi = (k, hi) if mean < TARGET_MEAN else (lo, k)
    chosen = sample((lo + hi) / 2)
    rng.shuffle(chosen)

    out.write_text("".join(s + "\n" for s, _ in chosen), encoding="utf-8")
    ns = [n for _, n in chosen]
    print(f"pool {len(pool)} -> wrote {len(chosen)} sentences to {out}; tokens "
          f"mean {sum(ns) / len(ns):.1f} min {min(ns)} max {max(ns)}", file=sys.stderr)


if __name__ == "__main__":
    main()
