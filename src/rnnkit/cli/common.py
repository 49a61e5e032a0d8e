"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RnnkitError
from ..nn.cells import CELLS


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
