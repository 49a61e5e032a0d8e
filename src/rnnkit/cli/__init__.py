"""The `rnnkit` command: one module per command (group), each with a `register(subparsers)` that
adds its parser and sets `run`. Commands parse flags, call the library and map its errors to flag
wording; they hold no logic of their own that a Python user would need."""

from .main import main

__all__ = ["main"]
