"""Recurrent cells, one time step each, and an open registry by name.

A cell registered under a name can be used wherever rnnkit takes a cell name: `Recurrent`, the
language model's config and `rnnkit train --cell NAME`. Register one from Python with
`register_cell(name, cls)`, or from an installed package with an entry point in the group
`rnnkit.cells` (name = "package.module:CellClass"), which is looked up the first time an unknown
name is asked for. A model directory names its cell; loading it never runs code from the file.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ...errors import ParameterError
from .base import Cell, State
from .elman import ElmanCell
from .gru import GRUCell
from .lstm import LSTMCell
from .minimal import MinGRUCell, MinLSTMCell, ScanCell

ENTRY_POINT_GROUP = "rnnkit.cells"
CELLS: dict[str, type[Cell]] = {
    "elman": ElmanCell, "lstm": LSTMCell, "gru": GRUCell, "mingru": MinGRUCell, "minlstm": MinLSTMCell,
}


def register_cell(name: str, cls: type[Cell], *, replace: bool = False) -> type[Cell]:
    """Make `cls` (a `Cell` subclass) available under `name`; returns `cls`, so it can decorate.
    A name already taken by another class is refused unless `replace` is true."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a cell name must be an identifier such as 'mycell', got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Cell)):
        raise TypeError(f"register_cell needs a subclass of rnnkit.nn.cells.Cell, got {cls!r}")
    if CELLS.get(name, cls) is not cls and not replace:
        raise ValueError(f"cell name {name!r} is taken by {CELLS[name].__name__}; pass replace=True to replace it")
    CELLS[name] = cls
    return cls


def _load_entry_point(name: str) -> None:
    """Register the cell an installed package offers under `name`, if any."""
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            register_cell(name, point.load())
        except Exception as e:  # an installed package's code: whatever it raises, say which
            raise ParameterError("cell", f"{name!r} comes from the entry point {point.value!r}, which does not load "
                                 f"({type(e).__name__}: {e})") from None
        return


def cell_class(name: str) -> type[Cell]:
    """The cell class registered under `name`."""
    if isinstance(name, str) and name not in CELLS:
        _load_entry_point(name)
    if not isinstance(name, str) or name not in CELLS:
        raise ParameterError("cell", f"{name!r} is unknown: expected one of {', '.join(CELLS)} (or a cell "
                             f"registered with rnnkit.register_cell or an {ENTRY_POINT_GROUP!r} entry point)")
    return CELLS[name]


def make_cell(name: str, input_size: int, hidden_size: int, **options: Any) -> Cell:
    """Build the cell registered under `name`; `options` go to its constructor."""
    return cell_class(name)(input_size, hidden_size, **options)


__all__ = [
    "CELLS",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "MinGRUCell",
    "MinLSTMCell",
    "ScanCell",
    "State",
    "cell_class",
    "make_cell",
    "register_cell",
]
