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
from typing import Any

from ..demos.household.memory import DEFAULT_BUCKETS, FILES, MODELS, MemoryConfig, format_table, run_memory
from ..nn.cells import CELLS
from .common import int_list, name_list, output_dir


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "memory",
        help="accuracy at the household blank against distance: Elman, LSTM, GRU and a window model",
        description=__doc__.split("\n\n")[0].replace("`", ""),
    )
    d = MemoryConfig()
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated: window and any cell, e.g. mingru, minlstm (default: %(default)s)")
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
    p.set_defaults(run=run, params={"hidden_size": "hidden", "embedding_size": "embedding", "batch_size": "batch"})


def run(args: argparse.Namespace) -> int:
    models = name_list(args.models, [*CELLS, "window"], "--models", "model")
    buckets = None if args.buckets is None else tuple(int_list(args.buckets, "--buckets", minimum=0))
    config = MemoryConfig(
        max_distance=args.max_distance, buckets=buckets, train_sentences=args.train_sentences,
        test_sentences=args.test_sentences, hidden_size=args.hidden, embedding_size=args.embedding,
        window=args.window, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
    )
    out = output_dir(args.out)
    with StepBars(quiet=args.quiet or args.json, total=config.steps * len(models)) as progress:
        report = run_memory(config, models, out, progress=progress)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        print(f"wrote {', '.join(str(out / f) for f in FILES)}")
    return 0


class StepBars:
    """One tqdm bar (on stderr) over the memory models' training steps, named after the model in
    training: `progress(model, steps)` for `run_memory`. Nothing shows until training starts."""

    def __init__(self, quiet: bool, total: int) -> None:
        self.quiet, self.total, self.bar = quiet, total, None

    def __call__(self, model: str, steps: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total, unit="step", disable=self.quiet, file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(f"memory: {model}", refresh=False)
        self.bar.update(steps)

    def __enter__(self) -> StepBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
