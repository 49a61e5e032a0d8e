"""rnnkit: recurrent neural networks on PyTorch.

Shape legend used throughout: B batch, T time, E input features, H hidden units, V vocabulary,
L layers, D directions (1 or 2).
"""

from .apps.lm.generate import beam_search, predict_next, sample
from .apps.lm.model import LMConfig, RNNLanguageModel
from .data import build_corpus
from .nn.cells import CELLS, Cell, ElmanCell, GRUCell, LSTMCell, make_cell
from .nn.recurrent import Recurrent, Trace
from .training.checkpoint import load_model
from .training.loop import TrainConfig, evaluate, train

from ._version import __version__

__all__ = [
    "CELLS",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LMConfig",
    "LSTMCell",
    "RNNLanguageModel",
    "Recurrent",
    "Trace",
    "TrainConfig",
    "__version__",
    "beam_search",
    "build_corpus",
    "evaluate",
    "load_model",
    "make_cell",
    "predict_next",
    "sample",
    "train",
]
