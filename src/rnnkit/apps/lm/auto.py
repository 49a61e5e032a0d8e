"""Settings that fit the corpus: `rnnkit train --data FILE` with no model or training flag.

The rule, from the training text's size N (tokens), its tokenizer, this machine and the time budget:

1. The regime, by tokenizer. Words and BPE pieces: SGD at lr 20, clip 0.25, B 20 streams, windows
   of T 35, input and output embeddings tied (E = H), as the Penn Treebank recipes. Characters:
   AdamW at 2e-3, clip 1, B 64, T 128, E 128 untied.
2. The passes over the text a model should get: P = c (10^6 / N)^0.4, from 1 to 40, c = 12 for
   words and 6 for characters: small texts need many passes (and regularisation), large ones learn
   most in their first. On PTB's words a narrow model read many times beats a wide one read a few
   times at the same budget (2x200 over 7 epochs: test 99.4 in 12.6 minutes; 2x512 over 6: 104.2 in
   28; the first 5%: 2x200 176 against 2x400 216, docs/benchmarks.md), so words want P = 12 at
   N = 10^6. A text of characters has about five tokens a word, so it gets fewer passes than a
   word-level text of the same content, and a wider model, as character models want (PTB's
   characters: 2x768 over 4 epochs, 1.34 bits per character in 30 minutes).
3. The width: the largest H of the regime's ladder whose measured speeds here give P passes in the
   budget, an epoch costing its training tokens at the training speed (a few timed steps of the
   regularised model, in the precision it trains in) and its validation tokens at the evaluation
   speed (timed forward passes, float32, as the evaluation after every epoch runs), less a
   twentieth of the budget for checkpoints and the start; the smallest H when none does. Two layers.
4. Epochs: the passes the budget gives that width, rounded down (at least 1), with a cosine
   schedule over them.
5. Regularisation grows with what the model can memorise, its passes and its width: a strength
   s = 0.07 sqrt(epochs max(H, 400) / 400) for words, 0.05 sqrt(epochs) for characters, at most
   0.5. Words and BPE pieces get AWD-LSTM's set (Merity et al. 2017) at that strength: dropout s on
   the inputs, between layers and before V, one mask per window (variational), DropConnect 0.75 s
   on the recurrent matrices W and s / 4 of the embedding's rows; on the first 5% of PTB in 3
   minutes that set reached 176 where plain dropout's best was 203. On all of PTB in 30 minutes
   (2x400, 13 epochs) s = 0.25 reached test 88.8 where the first rule's 0.36 (0.1 sqrt(epochs H /
   400)) reached 97.5: over few passes the model is held back more than it overfits. The rule as it
   is then chose 2x512 over 12 epochs at s = 0.27 and reached 88.7. Characters get dropout s alone.
6. Precision: matrix products in bf16 (autocast; weights and optimizer in float32) on a GPU, and on
   a CPU that multiplies bf16 in hardware (AMX or AVX512-BF16, `native_cpu_bf16`), where it trains
   1.5-2.5 times as many tokens a second (the training speeds of step 3 are measured in it), so the
   same budget buys a wider model or more passes; float32 on other CPUs. `--no-cpu-bf16` keeps
   float32.

A measured rate is only as good as the machine is quiet; the budget also stops the run, so a slower
machine ends it early rather than late.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ...training.loop import TrainConfig
from .model import LMConfig, RNNLanguageModel

DEFAULT_MINUTES = 10.0  # the budget when none is given
LADDER = {"word": (128, 200, 300, 400, 512, 650, 800), "char": (256, 384, 512, 768, 1024)}
REGIME: dict[str, dict[str, Any]] = {
    "word": {"optimizer": "sgd", "lr": 20.0, "clip": 0.25, "batch_size": 20, "bptt": 35},
    "char": {"optimizer": "adamw", "lr": 2e-3, "clip": 1.0, "batch_size": 64, "bptt": 128},
}
PASSES = {"word": 12.0, "char": 6.0}  # c of step 2
MARGIN = 0.05  # of the budget: the start, checkpoints, the last evaluation
EVAL_BATCH_SIZE = TrainConfig.eval_batch_size  # the streams the evaluation after every epoch reads


class Speed(NamedTuple):
    """Tokens/s of a model here: training (forward, backward, step) and evaluation (forward)."""

    train: float
    evaluate: float


@dataclass(frozen=True)
class Plan:
    """What the rule chose, and why: `model` and `train` are config fields; `summary` is the line
    printed at the start."""

    model: dict[str, Any]
    train: dict[str, Any]
    speed: Speed  # of the chosen width, measured
    passes: float  # the passes the budget gives the chosen width
    summary: str


def fits(tokens: int, tokenizer_kind: str) -> bool:
    """Whether the regime's batch of B streams of T + 1 tokens can be cut from the text."""
    settings = REGIME["char" if tokenizer_kind == "char" else "word"]
    return tokens >= settings["batch_size"] * (settings["bptt"] + 1)


def target_passes(tokens: int, regime: str = "word") -> float:
    """P = c (10^6 / N)^0.4, from 1 to 40 (step 2 of the rule)."""
    return min(40.0, max(1.0, PASSES[regime] * (1e6 / max(tokens, 1)) ** 0.4))


def strength(regime: str, hidden: int, epochs: int) -> float:
    """s of step 5: grows with the passes and, for words wider than 400, the width."""
    s = 0.05 * math.sqrt(epochs) if regime == "char" else 0.07 * math.sqrt(epochs * max(hidden, 400) / 400)
    return round(min(0.5, s), 2)


def model_fields(regime: str, hidden: int, vocab_size: int, s: float) -> dict[str, Any]:
    """The model of a regime at width H and regularisation strength s (steps 1 and 5)."""
    if regime == "char":
        return {"cell": "lstm", "hidden_size": hidden, "embedding_size": min(128, hidden), "num_layers": 2,
                "dropout": s, "tie_weights": False, "vocab_size": vocab_size}
    return {"cell": "lstm", "hidden_size": hidden, "num_layers": 2, "tie_weights": True, "vocab_size": vocab_size,
            "dropout": s, "dropout_input": s, "dropout_embedding": round(s / 4, 3), "weight_drop": round(0.75 * s, 3),
            "variational": True}


def measure_speed(model_config: LMConfig, batch_size: int, bptt: int, optimizer: str,
                  device: torch.device = torch.device("cpu"), bf16: bool = False, steps: int = 5,
                  warmup: int = 3) -> Speed:
    """This model's speeds on `device`, each the median of `steps` timed steps after `warmup`
    untimed ones (on a CPU the first three or so run at half speed while the kernels and the
    allocator settle), on random ids (the global RNG is left as it was): training (forward,
    backward, clipping, optimizer step; with bf16 autocast, as `cpu_bf16` trains) and evaluation (a
    forward pass of EVAL_BATCH_SIZE streams in float32, as the evaluation after every epoch runs)."""

    def median_seconds(step: Any) -> float:
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    rng = torch.get_rng_state()
    try:
        model = RNNLanguageModel(model_config).to(device).train()
        opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)(model.parameters(), lr=1e-3)
        ids = torch.randint(0, model_config.vocab_size, (bptt + 1, max(batch_size, EVAL_BATCH_SIZE)), device=device)

        def train_step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model.loss(ids[:-1, :batch_size], ids[1:, :batch_size])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        @torch.no_grad()
        def eval_step() -> None:
            model.loss(ids[:-1, :EVAL_BATCH_SIZE], ids[1:, :EVAL_BATCH_SIZE])

        train = batch_size * bptt / median_seconds(train_step)
        model.eval()
        return Speed(train, EVAL_BATCH_SIZE * bptt / median_seconds(eval_step))
    finally:
        torch.set_rng_state(rng)


def plan(tokens: int, tokenizer_kind: str, vocab_size: int, minutes: float, valid_tokens: int = 0,
         device: torch.device = torch.device("cpu"), bf16: bool = False, speed: Any = measure_speed) -> Plan:
    """The settings for `tokens` training tokens (and `valid_tokens` evaluated after every epoch)
    and `minutes` of training on `device`, with bf16 autocast or not (see the module's docstring);
    `speed(model_config, batch_size, bptt, optimizer, device, bf16)` gives its `Speed`."""
    regime = "char" if tokenizer_kind == "char" else "word"
    settings = REGIME[regime]  # fits(tokens, tokenizer_kind) is the caller's to check
    seconds = 60 * minutes * (1 - MARGIN)
    want = target_passes(tokens, regime)

    def passes(rates: Speed) -> float:
        return seconds / (tokens / rates.train + valid_tokens / rates.evaluate)

    chosen: int | None = None
    rates = Speed(0.0, 0.0)
    for hidden in LADDER[regime]:  # widths in increasing order: slower, so fewer passes
        # timed with the regularisers on (their masks cost time; any strength costs the same)
        measured = speed(LMConfig(**model_fields(regime, hidden, vocab_size, 0.3)),
                         settings["batch_size"], settings["bptt"], settings["optimizer"], device, bf16)
        if chosen is not None and passes(measured) < want:
            break
        chosen, rates = hidden, measured
        if passes(rates) < want:
            break  # the narrowest already gets fewer passes than wanted
    assert chosen is not None  # the ladder is never empty
    got = passes(rates)
    epochs = max(1, int(got))
    s = strength(regime, chosen, epochs)
    model = model_fields(regime, chosen, vocab_size, s)
    train = {**settings, "epochs": epochs, "schedule": "cosine", "max_minutes": minutes,
             **({"cpu_bf16": bf16} if device.type == "cpu" else {})}
    size = f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k"
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else str(device)
    where += " in bf16" if bf16 else ""
    shape = (f"tied, AWD regularisers at {s:g}" if model["tie_weights"]
             else f"E {model['embedding_size']}, dropout {s:g}")
    summary = (f"{size} {regime} tokens, {minutes:g} minutes on {where} -> 2x{chosen} LSTM, {shape}, "
               f"{epochs} epoch{'s' if epochs > 1 else ''} (cosine), {settings['optimizer']} lr "
               f"{settings['lr']:g}, B {settings['batch_size']}, T {settings['bptt']} "
               f"(measured {rates.train:,.0f} tokens/s; wanted {want:.1f} passes"
               + ("; the budget gives less than one, so the run ends within its first epoch)" if got < 1 else ")"))
    return Plan(model, train, rates, got, summary)
