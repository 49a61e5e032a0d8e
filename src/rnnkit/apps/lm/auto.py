"""Settings that fit the corpus: `rnnkit train --data FILE` with no model or training flag.

The rule, from the training text's size N (tokens), its tokenizer, this machine and the time budget:

1. The regime, by tokenizer. Words and BPE pieces: SGD at lr 20, clip 0.25, B 20 streams, windows
   of T 35, input and output embeddings tied (E = H), as the Penn Treebank recipes. Characters:
   AdamW at 2e-3, clip 1, B 64, T 128, E 128 untied.
2. The passes over the text a model should get: P = 6 (10^6 / N)^0.4, from 1 to 30: small texts
   need many passes (and dropout), large ones learn most in their first. At N = 10^6 that is 6,
   near the 7 epochs of the 15-minute PTB recipe (`ptb-cpu`); a text of characters has about five
   tokens a word, so it gets fewer passes than a word-level text of the same content, and a wider
   model, as character models want.
3. The width: the largest H of the regime's ladder whose measured speed here (a few timed training
   steps, tokens/s) gives P passes in the budget, an epoch costing its training tokens plus a
   third of the validation tokens (the evaluation after it: a forward pass, no backward), less a
   twentieth of the budget for checkpoints and the start; the smallest H when none does. Two layers.
4. Epochs: the passes the budget gives that width, rounded down (at least 1), with a cosine
   schedule over them. Dropout grows with them: 0.1 sqrt(epochs) for words, 0.05 sqrt(epochs) for
   characters, at most 0.5.
5. Precision: matrix products in bf16 (autocast; weights and optimizer in float32) on a GPU, and on
   a CPU that multiplies bf16 in hardware (AMX, `native_cpu_bf16`), where it trains 1.5-2.5 times as
   many tokens a second (the speeds of step 3 are measured in it), so the same budget buys a wider
   model or more passes; float32 on other CPUs. `--no-cpu-bf16` keeps float32.

A measured rate is only as good as the machine is quiet; the budget also stops the run, so a slower
machine ends it early rather than late.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .model import LMConfig, RNNLanguageModel

DEFAULT_MINUTES = 10.0  # the budget when none is given
LADDER = {"word": (128, 200, 300, 400, 512, 650, 800), "char": (256, 384, 512, 768, 1024)}
REGIME: dict[str, dict[str, Any]] = {
    "word": {"optimizer": "sgd", "lr": 20.0, "clip": 0.25, "batch_size": 20, "bptt": 35},
    "char": {"optimizer": "adamw", "lr": 2e-3, "clip": 1.0, "batch_size": 64, "bptt": 128},
}
MARGIN = 0.05  # of the budget: the start, checkpoints, the last evaluation
EVALUATION_COST = 1 / 3  # of a training token's time, for a validation token (forward only)


@dataclass(frozen=True)
class Plan:
    """What the rule chose, and why: `model` and `train` are config fields; `summary` is the line
    printed at the start."""

    model: dict[str, Any]
    train: dict[str, Any]
    tokens_per_s: float
    passes: float  # the passes the budget gives the chosen width
    summary: str


def fits(tokens: int, tokenizer_kind: str) -> bool:
    """Whether the regime's batch of B streams of T + 1 tokens can be cut from the text."""
    settings = REGIME["char" if tokenizer_kind == "char" else "word"]
    return tokens >= settings["batch_size"] * (settings["bptt"] + 1)


def target_passes(tokens: int) -> float:
    """P = 6 (10^6 / N)^0.4, from 1 to 30 (step 2 of the rule)."""
    return min(30.0, max(1.0, 6 * (1e6 / max(tokens, 1)) ** 0.4))


def model_fields(regime: str, hidden: int, vocab_size: int, dropout: float) -> dict[str, Any]:
    if regime == "char":
        return {"cell": "lstm", "hidden_size": hidden, "embedding_size": min(128, hidden), "num_layers": 2,
                "dropout": dropout, "tie_weights": False, "vocab_size": vocab_size}
    return {"cell": "lstm", "hidden_size": hidden, "num_layers": 2, "dropout": dropout, "tie_weights": True,
            "vocab_size": vocab_size}


def measure_speed(model_config: LMConfig, batch_size: int, bptt: int, optimizer: str,
                  device: torch.device = torch.device("cpu"), bf16: bool = False, steps: int = 3) -> float:
    """Training tokens/s of this model on `device` (with bf16 autocast: as `cpu_bf16` trains): the
    median of `steps` timed steps after one warm-up (forward, backward, optimizer step on random
    ids; the global RNG is left as it was)."""
    rng = torch.get_rng_state()
    try:
        model = RNNLanguageModel(model_config).to(device).train()
        opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)(model.parameters(), lr=1e-3)
        ids = torch.randint(0, model_config.vocab_size, (bptt + 1, batch_size), device=device)
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model.loss(ids[:-1], ids[1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
        return batch_size * bptt / statistics.median(times)
    finally:
        torch.set_rng_state(rng)


def plan(tokens: int, tokenizer_kind: str, vocab_size: int, minutes: float, valid_tokens: int = 0,
         device: torch.device = torch.device("cpu"), bf16: bool = False, speed: Any = measure_speed) -> Plan:
    """The settings for `tokens` training tokens (and `valid_tokens` evaluated after every epoch)
    and `minutes` of training on `device`, with bf16 autocast or not (see the module's docstring);
    `speed(model_config, batch_size, bptt, optimizer, device, bf16)` gives training tokens/s."""
    regime = "char" if tokenizer_kind == "char" else "word"
    settings = REGIME[regime]  # fits(tokens, tokenizer_kind) is the caller's to check
    seconds = 60 * minutes * (1 - MARGIN)
    epoch = tokens + EVALUATION_COST * valid_tokens  # in training tokens' time
    want = target_passes(tokens)
    chosen: int | None = None
    rate = 0.0
    for hidden in LADDER[regime]:  # widths in increasing order: slower, so fewer passes
        measured = speed(LMConfig(**model_fields(regime, hidden, vocab_size, 0.0)),
                         settings["batch_size"], settings["bptt"], settings["optimizer"], device, bf16)
        if chosen is not None and measured * seconds / epoch < want:
            break
        chosen, rate = hidden, measured
        if rate * seconds / epoch < want:
            break  # the narrowest already gets fewer passes than wanted
    assert chosen is not None  # the ladder is never empty
    passes = rate * seconds / epoch
    epochs = max(1, int(passes))
    dropout = round(min(0.5, (0.05 if regime == "char" else 0.1) * math.sqrt(epochs)), 2)
    model = model_fields(regime, chosen, vocab_size, dropout)
    train = {**settings, "epochs": epochs, "schedule": "cosine", "max_minutes": minutes,
             **({"cpu_bf16": bf16} if device.type == "cpu" else {})}
    size = f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k"
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else str(device)
    where += " in bf16" if bf16 else ""
    tied = "tied" if model["tie_weights"] else f"E {model['embedding_size']}"
    summary = (f"{size} {regime} tokens, {minutes:g} minutes on {where} -> 2x{chosen} LSTM, {tied}, dropout "
               f"{dropout:g}, {epochs} epoch{'s' if epochs > 1 else ''} (cosine), {settings['optimizer']} lr "
               f"{settings['lr']:g}, B {settings['batch_size']}, T {settings['bptt']} "
               f"(measured {rate:,.0f} tokens/s; wanted {want:.1f} passes"
               + ("; the budget gives less than one, so the run ends within its first epoch)" if passes < 1 else ")"))
    return Plan(model, train, rate, passes, summary)
