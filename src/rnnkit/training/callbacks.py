"""What people watch while a run trains, as callbacks of the loop.

A callback is any callable `callback(event, info)`; the loop calls it with

    "start"  {"steps", "step", "batches", "device", "world_size"}  before the first step
    "step"   {"step", "epoch", "loss", "lr", "tokens_per_s"}   every log_every steps
    "eval"   {"step", "epoch", "valid_loss", ..., "lr", "elapsed_s", "best"}
    "end"    {"stopped", "step"}

so that another view of a run (TensorBoard, a dashboard) plugs in without touching the loop. In a
job of several processes, only rank 0's callbacks are called.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RnnkitError
from ..io import append_jsonl, write_bytes

Callback = Callable[[str, dict[str, Any]], None]

METRICS = "metrics.jsonl"


class MetricsFile:
    """Appends every evaluation to DIR/metrics.jsonl, one JSON object a line."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / METRICS

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "eval":
            append_jsonl(self.path, info)

    def truncate(self, step: int) -> None:
        """Keep the evaluations up to `step` (a resumed run makes the later ones again), and drop
        a last line that a crash cut."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        write_bytes(self.path, "".join(kept).encode("utf-8"))


class TensorBoard:
    """Writes the run's figures as TensorBoard event files in DIR/tensorboard, beside
    metrics.jsonl: train/loss, train/lr and train/tokens_per_s every report, valid/<figure> every
    evaluation, by step. A resumed run drops what its last attempt logged after the checkpoint it
    resumes from, as metrics.jsonl does. Needs the tensorboard package (rnnkit[tensorboard])."""

    def __init__(self, directory: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RnnkitError("--tensorboard needs the tensorboard package: pip install 'rnnkit[tensorboard]'") from None
        self.writer_class, self.path, self.writer = SummaryWriter, Path(directory) / "tensorboard", None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            # purge_step: the events after the step a resumed run starts from are made again
            self.writer = self.writer_class(str(self.path), purge_step=info["step"] + 1 if info["step"] else None)
        elif self.writer is None:
            return
        elif event == "step":
            for name in ("loss", "lr", "tokens_per_s"):
                self.writer.add_scalar(f"train/{name}", info[name], info["step"])
        elif event == "eval":
            for name, value in info.items():
                if name.startswith("valid_"):
                    self.writer.add_scalar(f"valid/{name[6:]}", value, info["step"])
            self.writer.flush()
        elif event == "end":
            self.writer.close()
            self.writer = None


class ProgressBar:
    """A tqdm bar over the training steps, with loss, perplexity and tokens/s; tqdm shows the time
    left. Evaluations print a line above it. Everything goes to stderr."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        if event == "start":
            self.bar = tqdm(total=info["steps"], initial=info["step"], unit="step", dynamic_ncols=True, file=sys.stderr)
            self.bar.write(f"training on {info['device']}, {info['batches']} batches per epoch", file=sys.stderr)
        elif event == "step" and self.bar is not None:
            self.bar.update(info["step"] - self.bar.n)
            postfix = {"epoch": info["epoch"] + 1, "loss": f"{info['loss']:.3f}",
                       "ppl": f"{math.exp(min(info['loss'], 50)):.1f}"}
            if info["tokens_per_s"]:
                postfix["tok_s"] = f"{info['tokens_per_s']:.0f}"
            self.bar.set_postfix(postfix | {"lr": f"{info['lr']:.3g}"})
        elif event == "eval" and self.bar is not None:
            figure = (f"valid perplexity {info['valid_perplexity']:.2f}" if "valid_perplexity" in info
                      else f"valid loss {info['valid_loss']:.4f}")
            if "valid_bleu" in info:
                figure += f", BLEU {info['valid_bleu']:.1f}"
            self.bar.write(f"step {info['step']}: {figure}" + (" (best, saved)" if info["best"] else ""), file=sys.stderr)
        elif event == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
