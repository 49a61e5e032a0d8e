"""Recurrent language models: the model, its training task and presets, prediction and generation.

Importing it registers the kind "lm", so that `load_model` rebuilds language-model directories.
"""

from ...data import load_tokenizer
from ...training.checkpoint import ModelKind, register_kind
from .generate import Prediction, beam_search, next_log_probs, predict_next, read_prompts, sample
from .model import LMConfig, RNNLanguageModel
from .task import TOKENIZER, LMTask, LMTrainConfig, check_vocabulary, evaluate, finish_run, train

register_kind("lm", ModelKind(RNNLanguageModel, LMConfig, lambda d: load_tokenizer(d / TOKENIZER), check_vocabulary))

__all__ = [
    "LMConfig",
    "LMTask",
    "LMTrainConfig",
    "Prediction",
    "RNNLanguageModel",
    "beam_search",
    "evaluate",
    "finish_run",
    "next_log_probs",
    "predict_next",
    "read_prompts",
    "sample",
    "train",
]
