"""bf16 autocast against float32 on the CPU, side by side: what `rnnkit train --cpu-bf16` buys.

Speed: for each shape, rnnkit's language model trains on random ids in float32 and under bf16
autocast (`torch.autocast("cpu", torch.bfloat16)`, as the trainer runs with `cpu_bf16`), in
interleaved rounds (float32, bf16, bf16, float32, ...) so that a noisy shared machine slows them
alike; the median tokens/s of each and their ratio. Quality: with --text, a character model (the
char shape) trains --steps steps on the text's first characters in each precision, from the same
initial weights and the same batches; the mean training loss of each over its last 20 steps.

    python benchmarks/precision.py [--shapes small,medium,char] [--rounds 3] [--text FILE]
        [--steps 160] [--quick] [--json] [--markdown docs/benchmarks.md]

bf16 is fast only where the CPU multiplies it in hardware (AMX: Intel Xeon from Sapphire Rapids
on; AVX512-BF16: AMD EPYC from Zen 4 on); elsewhere PyTorch emulates it, and the ratio says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rnnkit import LMConfig, RNNLanguageModel
from rnnkit.training.loop import DEFAULT_LR, native_cpu_bf16

from throughput import QUICK_SHAPES, SEED, SHAPES, Shape, machine_info, write_markdown  # the script beside this one

PRECISIONS = ("float32", "bf16")
LAST = 20  # steps whose mean loss is reported


def _model(shape: Shape) -> tuple[RNNLanguageModel, torch.optim.Optimizer]:
    torch.manual_seed(SEED)
    model = RNNLanguageModel(LMConfig(vocab_size=shape.vocab, cell="lstm", hidden_size=shape.hidden,
                                      embedding_size=shape.embedding, num_layers=shape.layers)).train()
    optimizer = (torch.optim.AdamW if shape.optimizer == "adamw" else torch.optim.SGD)(
        model.parameters(), lr=DEFAULT_LR[shape.optimizer])
    return model, optimizer


def _step(model: RNNLanguageModel, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          state: Any, bf16: bool) -> tuple[float, Any]:
    """One training step on windows x, y (T, B) from `state`, as the trainer takes it."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, state = model.loss(x, y, state)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return float(loss.detach()), state


def bench_speed(name: str, shape: Shape, rounds: int, steps: int) -> dict[str, Any]:
    """Median training tokens/s of each precision over interleaved rounds of `steps` steps (after one
    warm-up step each)."""
    ids = torch.randint(0, shape.vocab, (shape.bptt + 1, shape.batch), generator=torch.Generator().manual_seed(SEED))
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for r in range(rounds):
        for precision in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            model, optimizer = _model(shape)
            bf16 = precision == "bf16"
            _, state = _step(model, optimizer, ids[:-1], ids[1:], None, bf16)
            start = time.perf_counter()
            for _ in range(steps):
                _, state = _step(model, optimizer, ids[:-1], ids[1:], state, bf16)
            rates[precision].append(steps * shape.batch * shape.bptt / (time.perf_counter() - start))
    medians = {p: statistics.median(v) for p, v in rates.items()}
    return {"shape": name, **{f"{p}_tokens_per_s": m for p, m in medians.items()},
            "bf16_over_float32": medians["bf16"] / medians["float32"], "rounds": rounds, "steps": steps}


def bench_quality(text: Path, shape: Shape, steps: int) -> dict[str, Any]:
    """The char shape trained `steps` steps on the text's characters in each precision, from the
    same weights and batches: the mean loss (nats/char) of its last LAST steps, and the time."""
    need = steps * shape.bptt * shape.batch + 1
    chars = text.read_text(encoding="utf-8")[: need * 2]
    alphabet = {c: i for i, c in enumerate(sorted(set(chars)))}
    if len(chars) < need or len(alphabet) > shape.vocab:
        raise SystemExit(f"precision.py: --text needs {need:,} characters of at most {shape.vocab} kinds")
    ids = torch.tensor([alphabet[c] for c in chars[:need]])
    streams = ids[:-1].view(shape.batch, -1).t(), ids[1:].view(shape.batch, -1).t()  # (N, B) each
    result: dict[str, Any] = {"text": str(text), "steps": steps, "characters": need - 1}
    for precision in PRECISIONS:
        model, optimizer = _model(shape)
        state, losses, start = None, [], time.perf_counter()
        for s in range(steps):
            window = slice(s * shape.bptt, (s + 1) * shape.bptt)
            loss, state = _step(model, optimizer, streams[0][window], streams[1][window], state, precision == "bf16")
            losses.append(loss)
        result[precision] = {"loss_last": statistics.fmean(losses[-LAST:]), "seconds": time.perf_counter() - start}
    return result


def markdown_section(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = ["## bf16 autocast on the CPU", "",
             f"`python benchmarks/precision.py {s['command']}`, measured {m['date']} on {m['cpu']}, {m['cpu_count']} "
             f"cores; PyTorch {m['torch']}, {m['torch_threads']} threads; the CPU "
             f"{'multiplies bf16 in hardware' if report['native_bf16'] else 'emulates bf16'}. rnnkit's LSTM language "
             "model, a training step (forward, backward, clipping, optimizer) on random ids, interleaved rounds, median "
             "tokens/s.", "",
             "| shape | float32 (tok/s) | bf16 (tok/s) | bf16 / float32 |", "|---|---|---|---|"]
    for r in report["speed"]:
        lines.append(f"| {r['shape']} | {r['float32_tokens_per_s']:,.0f} | {r['bf16_tokens_per_s']:,.0f} "
                     f"| {r['bf16_over_float32']:.2f} |")
    q = report.get("quality")
    if q:
        lines += ["", f"The char shape trained {q['steps']} steps on the first {q['characters']:,} characters of "
                  f"`{Path(q['text']).name}` in each precision, from the same weights and batches: mean training loss "
                  f"over the last {LAST} steps {q['float32']['loss_last']:.4f} (float32, "
                  f"{q['float32']['seconds']:.0f} s) and {q['bf16']['loss_last']:.4f} nats/char (bf16, "
                  f"{q['bf16']['seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,medium,char", help=f"of {', '.join(SHAPES)} (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per precision (default %(default)s)")
    parser.add_argument("--text", type=Path, help="also train the char shape on this text in each precision")
    parser.add_argument("--steps", type=int, default=160, help="--text: training steps (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a tiny shape, few steps: a few seconds (for CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    parser.add_argument("--markdown", type=Path, help="write the table into this file (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else {}
    for name in [] if args.quick else args.shapes.split(","):
        if name not in SHAPES:
            parser.error(f"--shapes: unknown shape {name!r} (known: {', '.join(SHAPES)})")
        shapes[name] = SHAPES[name]
    if args.rounds < 1 or args.steps < LAST:
        parser.error(f"--rounds must be at least 1 and --steps at least {LAST}")
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    machine = machine_info()
    say(f"precision.py: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"bf16 in hardware (AMX or AVX512-BF16) {'yes' if native_cpu_bf16() else 'no'}")
    speed = []
    for name, shape in shapes.items():
        steps = 3 if args.quick else max(3, 60_000 // (shape.batch * shape.bptt))  # about 60k tokens a round
        speed.append(bench_speed(name, shape, args.rounds, steps))
        r = speed[-1]
        say(f"{name:8} float32 {r['float32_tokens_per_s']:8,.0f} tok/s  bf16 {r['bf16_tokens_per_s']:8,.0f} tok/s  "
            f"ratio {r['bf16_over_float32']:.2f}")
    quality = None
    if args.text is not None:
        shape = SHAPES["char"] if not args.quick else replace(QUICK_SHAPES["tiny"], vocab=SHAPES["char"].vocab,
                                                               optimizer="adamw")
        quality = bench_quality(args.text, shape, args.steps)
        say(f"char on {args.text.name}: mean loss of the last {LAST} steps: " + ", ".join(
            f"{p} {quality[p]['loss_last']:.4f} ({quality[p]['seconds']:.0f} s)" for p in PRECISIONS))
    report = {"machine": machine, "native_bf16": native_cpu_bf16(), "speed": speed, "quality": quality,
              "settings": {"command": " ".join(sys.argv[1:]), "rounds": args.rounds, "steps": args.steps,
                           "quick": args.quick}}
    if args.json:
        print(json.dumps(report, indent=2))
    if args.markdown is not None:
        write_markdown(args.markdown, "precision:cpu", markdown_section(report))
        say(f"precision.py: wrote the table to {args.markdown}")


if __name__ == "__main__":
    main()
