#!/usr/bin/env python3
"""Build bench/chat_requests.jsonl: 256 short single-turn chat requests in the
OpenAI batch format (max_tokens 64, temperature 0) for LLM benchmarks.

Prompts are one sentence, made from fixed templates and topics sampled with a
fixed seed, so the file is identical on every run.

usage: python3 bench/make_chat_requests.py [OUT]   (standard library only)
"""
import itertools
import json
import random
import sys
from pathlib import Path

N, SEED = 256, 0
TEMPLATES = [
    "What is {}?",
    "Explain {} in one sentence.",
    "Give me a fun fact about {}.",
    "Write a short poem about {}.",
    "List three things you know about {}.",
    "Why does {} matter?",
    "Describe {} to a five-year-old.",
    "What are the pros and cons of {}?",
    "Write a one-line slogan for {}.",
    "Tell me a short story involving {}.",
]
TOPICS = [
    "the moon", "photosynthesis", "a rainbow", "the ocean", "volcanoes", "honey bees",
    "the internet", "electric cars", "coffee", "chess", "the Roman Empire", "gravity",
    "a black hole", "recycling", "the piano", "jazz music", "penguins", "the Sahara desert",
    "machine learning", "a compiler", "the stock market", "bread baking", "the Eiffel Tower",
    "solar panels", "dinosaurs", "a thunderstorm", "the human heart", "democracy",
    "origami", "the printing press", "clouds", "a lighthouse", "vaccines", "football",
    "the alphabet", "a library", "mountains", "trains", "the color blue", "friendship",
]
EXTRA = [  # arithmetic and translation, filled with seeded numbers / words
    lambda r: f"What is {r.randint(2, 99)} plus {r.randint(2, 99)}?",
    lambda r: f"What is {r.randint(2, 12)} times {r.randint(2, 12)}?",
    lambda r: f"Translate '{r.choice(['thank you', 'good night', 'I am hungry', 'where is the station', 'see you tomorrow'])}' into {r.choice(['French', 'Spanish', 'German', 'Italian'])}.",
]


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "chat_requests.jsonl"
    rng = random.Random(SEED)
    pairs = rng.sample(list(itertools.product(TEMPLATES, TOPICS)), N - 32)
    prompts = [t.format(x) for t, x in pairs]
    while len(prompts) < N:  # distinct prompts only
        p = rng.choice(EXTRA)(rng)
        if p not in prompts:
            prompts.append(p)
    rng.shuffle(prompts)
    with open(out, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({
                "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "smollm2", "messages": [{"role": "user", "content": p}],
                         "max_tokens": 64, "temperature": 0},
            }) + "\n")
    print(f"wrote {len(prompts)} requests to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
