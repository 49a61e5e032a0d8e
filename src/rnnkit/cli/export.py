"""`rnnkit export MODEL --format onnx [--int8] [--int4]`: write a language model's ONNX graphs into
MODEL/onnx, for `rnnkit predict` and `generate` with `--runtime onnx`, `onnx-int8` or `onnx-int4`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..apps.lm.onnx import export_directory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a language model to ONNX, for --runtime onnx",
        description="Write MODEL/onnx/step.onnx (token ids and state -> log-probabilities and state, run by "
        "onnxruntime; `rnnkit predict|generate --runtime onnx`), with --int8 also step.int8.onnx "
        "(int8 weights, dynamic quantisation; `--runtime onnx-int8`), with --int4 also step.int4.onnx (int8, "
        "but the output layer in 4 bits: the fastest to sample from; `--runtime onnx-int4`). Export again after "
        "training again: an export older than the weights is refused.",
    )
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the one format so far (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="also write the int8 graph")
    p.add_argument("--int4", action="store_true", help="also write the int4 graph (int8 with a 4-bit output layer)")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    for path in export_directory(args.model, [p for p in ("int8", "int4") if getattr(args, p)]):
        size = path.stat().st_size
        print(f"wrote {path} ({size / 1e6:.1f} MB)" if size >= 1e5 else f"wrote {path} ({size / 1e3:.1f} kB)")
    return 0
