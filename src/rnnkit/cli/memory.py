"""`rnnkit memory`: memory over distance on the household corpus. An Elman network, an LSTM, a GRU
and a feed-forward model over a fixed window of n words are trained on the same sentences with the
same budget; each fills the blank of held-out sentences ("... and turned on the ___"), and the
accuracy is reported per bucket of distance between the cue and the blank.

Writes into --out: memory.json (settings and results), memory.csv (the table) and memory.png
(accuracy against distance, one line per model, chance dashed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import save_figure, write_csv, write_json
from ..demos.household.memory import DEFAULT_BUCKETS, MODELS, MemoryConfig, make_data, measure, plot_memory
from ..errors import RnnkitError
from .gradients import cell_list, output_dir

FILES = ("memory.json", "memory.csv", "memory.png")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "memory",
        help="accuracy at the household blank against distance: Elman, LSTM, GRU and a window model",
        description=__doc__.split("\n\n")[0].replace("`", ""),
    )
    d = MemoryConfig()
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    p.add_argument("--window", type=int, default=d.window, help="n, the window model's previous words (default: %(default)s)")
    p.add_argument("--max-distance", type=int, default=d.max_distance,
                   help="longest distance between cue and blank (default: %(default)s)")
    p.add_argument("--buckets", help="lower edges of the distance buckets (default: those of "
                   f"{','.join(map(str, DEFAULT_BUCKETS))} up to --max-distance)")
    p.add_argument("--steps", type=int, default=d.steps, help="AdamW steps per model (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=d.hidden_size, help="hidden units (default: %(default)s)")
    p.add_argument("--embedding", type=int, default=d.embedding_size, help="embedding size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch_size, help="sentences per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW's learning rate (default: %(default)s)")
    p.add_argument("--train-sentences", type=int, default=d.train_sentences, help="(default: %(default)s)")
    p.add_argument("--test-sentences", type=int, default=d.test_sentences, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, batches and data (default: %(default)s)")
    p.add_argument("--out", default="memory", help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    models = cell_list(args.models, MODELS, "--models", "model")
    try:
        buckets = None if args.buckets is None else tuple(int(b) for b in args.buckets.split(",") if b.strip())
    except ValueError:
        raise RnnkitError(f"--buckets must be comma-separated integers, got {args.buckets!r}") from None
    try:
        config = MemoryConfig(
            max_distance=args.max_distance, buckets=buckets, train_sentences=args.train_sentences,
            test_sentences=args.test_sentences, hidden_size=args.hidden, embedding_size=args.embedding,
            window=args.window, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
        )
    except ValueError as error:
        raise RnnkitError(str(error)) from None
    out = output_dir(args.out)
    report = run_memory(config, models, out, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        print(f"wrote {', '.join(str(out / f) for f in FILES)}")
    return 0


def run_memory(config: MemoryConfig, models: list[str], out: Path, quiet: bool = False) -> dict[str, Any]:
    """Train and measure every model, write the files into `out`; return the report
    {"config", "chance", "buckets", "results": [...], "files"}."""
    from tqdm import tqdm

    data = make_data(config)
    results = []
    with tqdm(total=config.steps * len(models), unit="step", disable=quiet, file=sys.stderr,
              dynamic_ncols=True, desc="memory") as bar:
        for name in models:
            bar.set_description(f"memory: {name}")
            results.append(measure(name, data, config, progress=bar.update))
    report = {
        "config": asdict(config), "chance": data.chance, "test_sentences": len(data.targets),
        "buckets": config.bucket_labels(), "results": [r.to_dict() for r in results],
        "files": {name.split(".")[1]: str(out / name) for name in FILES},
    }
    write_csv(out / "memory.csv", ["model", *report["buckets"], "parameters", "seconds"],
              [[r.model, *("" if a is None else f"{a:.4f}" for a in r.accuracy), r.parameters, f"{r.seconds:.1f}"] for r in results])
    save_figure(out / "memory.png", plot_memory(results, data.chance, config.window), dpi=100)
    write_json(out / "memory.json", report)  # last: the demo takes its presence for a finished run
    return report


def format_table(report: dict[str, Any]) -> str:
    """The accuracy table of a `run_memory` report, as text."""
    config = report["config"]
    lines = [
        (f"accuracy at the blank by words between cue and blank ({report['test_sentences']} test sentences, "
         f"chance {report['chance']:.1%}; {config['steps']} steps of {config['batch_size']} sentences each)"),
        f"{'model':<12}" + "".join(f"{b:>8}" for b in report["buckets"]) + f"{'params':>9}{'seconds':>9}",
    ]
    for r in report["results"]:
        name = f"window n={config['window']}" if r["model"] == "window" else r["model"]
        cells = "".join(f"{'-':>8}" if a is None else f"{a:>8.1%}" for a in r["accuracy"])
        lines.append(f"{name:<12}{cells}{r['parameters']:>9}{r['seconds']:>9.1f}")
    return "\n".join(lines)
