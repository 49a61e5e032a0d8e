"""Recurrent cells, one time step each, and a registry by name."""

from __future__ import annotations

from typing import Any

from .base import Cell, State
from .elman import ElmanCell
from .gru import GRUCell
from .lstm import LSTMCell

CELLS: dict[str, type[Cell]] = {"elman": ElmanCell, "lstm": LSTMCell, "gru": GRUCell}


def cell_class(name: str) -> type[Cell]:
    """The cell class registered under `name` ("elman", "lstm" or "gru")."""
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(f"unknown cell {name!r}: expected one of {', '.join(CELLS)}")
    return CELLS[name]


def make_cell(name: str, input_size: int, hidden_size: int, **options: Any) -> Cell:
    """Build the cell registered under `name`; `options` go to its constructor."""
    return cell_class(name)(input_size, hidden_size, **options)


__all__ = ["CELLS", "Cell", "ElmanCell", "GRUCell", "LSTMCell", "State", "cell_class", "make_cell"]
