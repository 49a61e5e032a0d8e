"""`rnnkit demo`: the seed's example, run. Trains an LSTM language model on the household corpus
(once: the model is cached in --out), then shows

1. the top 5 next words after the seed's full sentence and after "turned on the" alone;
2. which earlier words drove the prediction (occlusion and integrated gradients), as text and PNG;
3. memory over distance: Elman, LSTM, GRU and a fixed-window model (see `rnnkit memory`).

Writes into --out: model/ (a model directory, usable with `rnnkit predict`), attribution.png,
memory/ (memory.png, .json, .csv) and demo.json (everything printed, as JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..demos.household import demo
from ..training import ProgressBar
from .common import output_dir
from .memory import StepBars


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train on the household corpus and show how the network remembers (start here)",
        description=__doc__.split("\n\n")[0].replace("`", ""),
    )
    p.add_argument("--out", default="runs/demo", help="folder for the model and the plots (default: %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train again instead of using the cached model and results")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object (no progress bars)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = output_dir(args.out)
    progress = None if args.json else ProgressBar()
    with StepBars(quiet=args.json, total=demo.MEMORY.steps * len(demo.MODELS)) as bars:
        try:
            result = demo.run_demo(out, retrain=args.retrain, callback=progress, memory_progress=bars)
        finally:
            if progress is not None:
                progress.close()
    if result is None:
        where = "the model in place is unchanged" if args.retrain else (
            f"the training so far is saved in {out / 'model'}, run `rnnkit demo` again to continue it")
        print(f"rnnkit: interrupted; {where}", file=sys.stderr)
        return 130
    report, memory = result
    print(json.dumps(report) if args.json else demo.format_report(report, memory))
    return 0
