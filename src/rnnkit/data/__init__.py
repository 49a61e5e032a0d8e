"""Data: text files, tokenizers, corpora on disk, batches, and dataset downloads.

    text files -> Tokenizer (char | word | bpe) -> Corpus (ids in memmaps) -> BPTTBatches (T, B)
"""

from .batching import BPTTBatches, detach_state
from .corpus import HOLDOUT, SPLITS, Corpus, build_corpus, encode_to_file, open_corpus, plan_splits
from .files import text_files
from .tokenizers import (
    EOS,
    KINDS,
    UNK,
    BPETokenizer,
    CharTokenizer,
    TextStream,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_from_text,
)

__all__ = [
    "EOS",
    "HOLDOUT",
    "KINDS",
    "SPLITS",
    "UNK",
    "BPETokenizer",
    "BPTTBatches",
    "CharTokenizer",
    "Corpus",
    "TextStream",
    "Tokenizer",
    "WordTokenizer",
    "build_corpus",
    "detach_state",
    "encode_to_file",
    "load_tokenizer",
    "open_corpus",
    "plan_splits",
    "text_files",
    "train_tokenizer",
    "train_tokenizer_from_text",
]
