"""Generation speed over a long text: is it flat, or does it fall as the text grows?

`rnnkit.sample` streams text in whole characters and in constant time per token (a tokenizer's
`stream()`); decoding all the ids again for every token, as rnnkit once did, made generation
slow down quadratically (1,441 -> 327 tokens/s over 12k tokens). This script generates
`--tokens` tokens with a random-weight LSTM language model and a byte-level BPE tokenizer (trained
on text with non-ASCII characters, so that pieces end inside characters) and a word tokenizer,
and reports tokens/s in every block of `--block` tokens.

    python benchmarks/generation.py [--tokens 10000] [--block 1000] [--hidden 200] [--json] [--quick]

"flat" in the output is the last block's rate over the first's: near 1 when the time per token
does not grow with the text.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import torch

from rnnkit import LMConfig, RNNLanguageModel, decoding
from rnnkit.apps.lm import read_prompts
from rnnkit.data import Tokenizer, train_tokenizer_from_text
from throughput import machine_info  # the script beside this one

SEED = 0
WORDS = ["Ärger", "über", "Köln", "naïve", "café", "日本語", "テキスト", "emoji", "😀", "🎉", "the", "cat", "sat",
         "on", "mat", "déjà", "vu", "ñandú", "Grüße", "straße"]


def _text(lines: int) -> list[str]:
    rng = random.Random(SEED)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(lines)]


def measure(tokenizer: Tokenizer, hidden: int, tokens: int, block: int) -> dict[str, Any]:
    """Generate `tokens` tokens the way `rnnkit.sample` does (the prompt read, then one
    `decoding.sample` step and one `stream().step` a token), timing every `block` of them."""
    torch.manual_seed(SEED)
    model = RNNLanguageModel(LMConfig(tokenizer.vocab_size, hidden_size=hidden, num_layers=2)).eval()
    start = time.perf_counter()
    log_probs, state = read_prompts(model, tokenizer, ["the cat"])
    stream, text, out, rates, mark = tokenizer.stream(), [], [], [], start
    generator = torch.Generator().manual_seed(SEED)
    for t, ids in enumerate(decoding.sample(model, log_probs, state, tokens, generator=generator), 1):
        out.append(int(ids[0]))
        text.append(stream.step(out[-1]))
        if t % block == 0:
            now = time.perf_counter()
            rates.append(block / (now - mark))
            mark = now
    seconds = time.perf_counter() - start
    joined = "".join(text) + stream.flush()
    return {
        "tokenizer": tokenizer.kind, "vocab": tokenizer.vocab_size, "hidden": hidden, "tokens": tokens, "block": block,
        "tokens_per_s": rates, "flat": rates[-1] / rates[0],
        "characters": len(joined), "streamed_equals_decoded": joined == tokenizer.decode(out), "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--block", type=int, default=1_000)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="2,000 tokens in blocks of 500 (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.block = 2_000, 500
    if args.tokens < args.block or args.block < 1:
        parser.error("--tokens must be at least --block, and --block at least 1")
    lines = _text(2000)
    results = [
        measure(train_tokenizer_from_text("bpe", lines, vocab_size=600), args.hidden, args.tokens, args.block),
        measure(train_tokenizer_from_text("word", lines), args.hidden, args.tokens, args.block),
    ]
    report = {
        "machine": machine_info(),
        "command": " ".join(sys.argv[1:]), "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for r in results:
        rates = ", ".join(f"{x:.0f}" for x in r["tokens_per_s"])
        print(f"{r['tokenizer']:5} V={r['vocab']:<5} H={r['hidden']}: tokens/s per {r['block']}: {rates}; "
              f"last / first {r['flat']:.2f}; streamed text equals decoding all ids at once: {r['streamed_equals_decoded']}")


if __name__ == "__main__":
    main()
