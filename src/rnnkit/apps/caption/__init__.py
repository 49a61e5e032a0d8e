"""Image captioning: a CNN encoder, an LSTM decoder with visual attention, its data and training.

Importing it registers the kind "caption", so that `load_model` rebuilds captioner directories.
"""

from ...data import load_tokenizer
from ...errors import RnnkitError
from ...training.checkpoint import ModelKind, register_kind
from .data import digits_corpus, load_splits, read_captions, read_image, scenes_corpus
from .model import CaptionConfig, Captioner
from .task import (TOKENIZER, Caption, CaptionTask, CaptionTrainConfig, attention_map, build_vocabulary, describe,
                   evaluate, finish_run, load_images, scores, train)


def _check(config: CaptionConfig, tokenizer) -> None:
    if tokenizer.vocab_size != config.vocab_size:
        raise RnnkitError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}")


register_kind("caption", ModelKind(Captioner, CaptionConfig, lambda d: load_tokenizer(d / TOKENIZER), _check))

__all__ = [
    "Caption", "CaptionConfig", "CaptionTask", "CaptionTrainConfig", "Captioner", "attention_map", "build_vocabulary",
    "describe", "digits_corpus", "evaluate", "finish_run", "load_images", "load_splits", "read_captions", "read_image",
    "scenes_corpus", "scores", "train",
]
