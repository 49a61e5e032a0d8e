"""Machine translation: an encoder-decoder with attention, its data, training, decoding and BLEU.

Importing it registers the kind "translate", so that `load_model` rebuilds translator directories.
"""

from ...data import load_tokenizer
from ...training.checkpoint import ModelKind, register_kind
from .data import gettext_corpus, load_pairs, number_corpus, read_mo, read_tsv
from .model import TranslateConfig, Translator
from .task import (SOURCE, TARGET, TranslateTask, TranslateTrainConfig, Translation, Vocabularies, attention_map,
                   build_vocabularies, evaluate, finish_run, scores, train, translate)


def _check(config: TranslateConfig, vocab: Vocabularies) -> None:
    from ...errors import RnnkitError

    for side, tokenizer, size in (("source", vocab.source, config.source_vocab_size),
                                  ("target", vocab.target, config.target_vocab_size)):
        if tokenizer.vocab_size != size:
            raise RnnkitError(f"the {side} tokenizer has {tokenizer.vocab_size} tokens but the model expects {size}")


register_kind("translate", ModelKind(
    Translator, TranslateConfig, lambda d: Vocabularies(load_tokenizer(d / SOURCE), load_tokenizer(d / TARGET)), _check))

__all__ = [
    "TranslateConfig", "TranslateTask", "TranslateTrainConfig", "Translation", "Translator", "Vocabularies",
    "attention_map", "build_vocabularies", "evaluate", "finish_run", "gettext_corpus", "load_pairs", "number_corpus",
    "read_mo", "read_tsv", "scores", "train", "translate",
]
