"""rnnkit: recurrent neural networks on PyTorch.

Shape legend used throughout: B batch, T time, E input features, H hidden units, V vocabulary,
L layers, D directions (1 or 2).
"""

from .cells import CELLS, Cell, ElmanCell, GRUCell, LSTMCell, make_cell
from .checkpoint import load_model
from .generate import beam_search, predict_next, sample
from .lm import LMConfig, RNNLanguageModel
from .recurrent import Recurrent, Trace
from .text import build_corpus
from .trainer import TrainConfig, evaluate, train

__version__ = "0.1.0"

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
