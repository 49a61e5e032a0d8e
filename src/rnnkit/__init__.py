"""rnnkit: recurrent neural networks on PyTorch.

Shape legend used throughout: B batch, T time, E input features, H hidden units, V vocabulary,
L layers, D directions (1 or 2).
"""

from .cells import CELLS, Cell, ElmanCell, GRUCell, LSTMCell, make_cell
from .recurrent import Recurrent, Trace

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "Recurrent",
    "Trace",
    "__version__",
    "make_cell",
]
