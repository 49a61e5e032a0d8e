"""Speech recognition: speech synthesised with espeak-ng, log-mel features, a bidirectional
recurrent acoustic model trained with CTC, and decoding with a language model fused in.

Importing it registers the kind "speech", so that `load_model` rebuilds recogniser directories.
"""

from ...training.checkpoint import ModelKind, register_kind
from .model import SpeechConfig, SpeechRecognizer
from .task import SpeechTask, SpeechTrainConfig, error_rates, evaluate, finish_run, train, transcribe_file

register_kind("speech", ModelKind(SpeechRecognizer, SpeechConfig, lambda d: None, None))

__all__ = [
    "SpeechConfig", "SpeechRecognizer", "SpeechTask", "SpeechTrainConfig", "error_rates", "evaluate", "finish_run",
    "train", "transcribe_file",
]
