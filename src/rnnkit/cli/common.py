"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import RnnkitError
from ..nn.cells import CELLS
from ..training import ProgressBar, read_config
from ..training.checkpoint import check_target, lock_directory, remove_orphans


def name_list(text: str, allowed: Sequence[str] | None = None, flag: str = "--cells", what: str = "cell") -> list[str]:
    """Parse "elman,lstm" into ["elman", "lstm"]; unknown or repeated names are a user error.
    `allowed` defaults to the cells registered now."""
    allowed = list(CELLS) if allowed is None else allowed
    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not names:
        raise RnnkitError(f"{flag} needs at least one of {', '.join(allowed)}, got {text!r}")
    for name in names:
        if name not in allowed:
            raise RnnkitError(f"unknown {what} {name!r} in {flag}: expected {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise RnnkitError(f"{flag} lists a {what} twice: {text!r}")
    return names


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The command's flags and arguments as JSON values, for the settings a report records."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("run", "parser", "params")}


def int_list(text: str, flag: str, minimum: int) -> list[int]:
    """Parse "50,100" into [50, 100]; every value must be an integer >= minimum."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RnnkitError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise RnnkitError(f"{flag} needs integers >= {minimum}, got {text!r}")
    return values


def at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise RnnkitError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def output_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RnnkitError(f"--out {str(path)!r} exists and is not a folder") from None
    except OSError as error:
        raise RnnkitError(f"cannot create --out {str(path)!r}: {error.strerror}") from None
    return out


# the flags of the training loop's settings that every application's `train` command offers:
# flag -> ("train", TrainConfig field)
LOOP_FLAGS = {name: ("train", name) for name in (
    "epochs", "max_minutes", "batch_size", "lr", "clip", "seed", "device", "eval_every", "checkpoint_every", "early_stop")}


def config_fields(args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The "model" and "train" config fields that flags (flag -> (section, field)) set."""
    sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for flag, (section, field) in flags.items():
        if getattr(args, flag) is not None:
            sections[section][field] = getattr(args, flag)
    return sections


@contextlib.contextmanager
def training_into(args: argparse.Namespace, kind: str, what: str) -> Iterator[dict[str, Any] | None]:
    """Hold --out for a training command of a model `kind`: refuse a folder of someone else's files
    (unless --force) and a second writer, clear what a killed run left, and settle --resume. Yields
    the saved config.json to go on from, or None for a fresh run (args.resume is then False)."""
    out: Path = args.out
    check_target(out, force=args.force)
    with lock_directory(out):  # a second run on the same --out is refused here
        remove_orphans(out)
        saved = None
        if args.resume and not (out / "config.json").exists():
            print(f"rnnkit: note: {out} holds no model yet; starting afresh", file=sys.stderr)
            args.resume = False
        elif not args.resume and (out / "config.json").exists():
            raise RnnkitError(f"{out} already holds a model: use --resume to continue it, or another --out")
        elif args.resume:
            saved = read_config(out)
            if saved["kind"] != kind:
                raise RnnkitError(f"{out} holds a {saved['kind']!r} model, not {what}")
        yield saved


def train_with_progress(args: argparse.Namespace, train: Callable[[list[Any]], dict[str, Any]]) -> dict[str, Any] | None:
    """train(callbacks) under a progress bar (none with --quiet); None, said, when Ctrl-C stopped it."""
    progress = [] if args.quiet else [ProgressBar()]
    try:
        summary = train(progress)
    finally:
        for bar in progress:
            bar.close()
    if summary["stopped"] == "interrupted":
        print(f"rnnkit: interrupted at step {summary['steps']}; saved in {args.out}, continue with --resume",
              file=sys.stderr)
        return None
    return summary


def run_demo_with_progress(demo: Callable[..., dict[str, Any] | None], format_report: Callable[[dict[str, Any]], str],
                           saved_in: Path) -> int:
    """An application's demo, demo(callback=..., say=...), under a progress bar, its notes on
    standard error and its report on standard output; 130, said, when Ctrl-C stopped its training."""
    progress = ProgressBar()
    try:
        report = demo(callback=progress, say=lambda text: print(text, file=sys.stderr))
    finally:
        progress.close()
    if report is None:
        print(f"rnnkit: interrupted; the training so far is saved in {saved_in}, run the demo again to continue it",
              file=sys.stderr)
        return 130
    print(format_report(report))
    return 0
