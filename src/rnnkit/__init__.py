"""rnnkit: recurrent neural networks on PyTorch.

Shape legend used throughout: B batch, T time, E input features, H hidden units, V vocabulary,
L layers, D directions (1 or 2).

The layers, each importing only those above it in this list:

    errors, configs, io     exceptions, JSON configs, atomic files
    allocator               keep_freed_memory: glibc's malloc keeps freed blocks for the next step
    nn                      cells (an open registry), Recurrent (the layer that unrolls them), and
                            functional: dropout and cross-entropy, cheaper on a CPU
    data                    text files, tokenizers, memmap corpora, BPTT batches, downloads
    training                one loop for every task, callbacks, the model directory (by kind)
    decoding                sampling and beam search over a step protocol
    apps                    lm/ (the language model), translate/ (encoder-decoder with attention),
                            caption/ (CNN encoder, LSTM decoder with visual attention)
    diagnostics, demos      gradient flow, memory tasks, attribution; the household world
    cli                     the `rnnkit` command
"""

from ._version import __version__
from .allocator import keep_freed_memory
from .apps.lm import LMConfig, LMTrainConfig, RNNLanguageModel, beam_search, evaluate, predict_next, sample, train
from .apps.caption import CaptionConfig, Captioner
from .apps.speech import SpeechConfig, SpeechRecognizer
from .apps.translate import TranslateConfig, Translator
from .data import build_corpus
from .nn.cells import CELLS, Cell, ElmanCell, GRUCell, LSTMCell, make_cell, register_cell
from .nn.recurrent import Recurrent, Trace
from .training import TrainConfig, fit, load_model

__all__ = [
    "CELLS",
    "CaptionConfig",
    "Captioner",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LMConfig",
    "LMTrainConfig",
    "LSTMCell",
    "RNNLanguageModel",
    "Recurrent",
    "SpeechConfig",
    "SpeechRecognizer",
    "Trace",
    "TrainConfig",
    "TranslateConfig",
    "Translator",
    "__version__",
    "beam_search",
    "build_corpus",
    "evaluate",
    "fit",
    "keep_freed_memory",
    "load_model",
    "make_cell",
    "predict_next",
    "register_cell",
    "sample",
    "train",
]
