"""Training and using a translator: vocabularies, the task on the generic loop, decoding, BLEU.

Training reads bucketed batches of padded pairs with teacher forcing (the decoder reads the
reference's previous token) and a label-smoothed loss (Szegedy et al. 2016); every evaluation
gives the validation loss, which picks the best model, and the greedy BLEU of a sample of the
validation pairs, so that metrics.jsonl shows BLEU against training time. Translation runs greedy
or beam search from `rnnkit.decoding`; BLEU and chrF come from sacrebleu, on detokenised text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...configs import FieldChecks
from ...data import Tokenizer, train_tokenizer_from_text
from ...decoding import best_sequences
from ...errors import RnnkitError
from ...io import write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model
from ...training.loop import Draws, Task, TrainConfig, fit, resolve_device
from .data import Batch, Pair, bucketed, collate
from .model import TranslateConfig, Translator

SOURCE, TARGET = "source_tokenizer.json", "target_tokenizer.json"
DEFAULT_VOCAB = {"bpe": 4000}  # char and word: every token seen


@dataclass(frozen=True)
class Vocabularies:
    """The source and target tokenizers of a translator (one object twice where they are shared)."""

    source: Tokenizer
    target: Tokenizer

    @property
    def eos(self) -> int:
        """The target token that starts and ends a sentence (the target tokenizer's line end)."""
        return self.target.line_end_id

    def assets(self) -> dict[str, Tokenizer]:
        return {SOURCE: self.source, TARGET: self.target}


def build_vocabularies(pairs: Sequence[Pair], kind: str = "bpe", vocab_size: int | None = None,
                       shared: bool = False) -> Vocabularies:
    """Tokenizers trained on the training pairs: one on both sides (`shared`) or one per side."""
    vocab_size = vocab_size or DEFAULT_VOCAB.get(kind)

    def text(sides: Sequence[int]) -> list[str]:  # one sentence a line: char tokenizers learn the line end
        return ["\n".join(pair[side] for pair in pairs for side in sides) + "\n"]

    if shared:
        both = train_tokenizer_from_text(kind, text((0, 1)), vocab_size)
        return Vocabularies(both, both)
    return Vocabularies(train_tokenizer_from_text(kind, text((0,)), vocab_size),
                        train_tokenizer_from_text(kind, text((1,)), vocab_size))


@dataclass(frozen=True)
class Encoded:
    """A sentence as source ids, and what reading it found."""

    ids: list[int]
    truncated: int  # tokens cut off beyond the model's max_length (0: none)
    unknown: list[str]  # words the source vocabulary does not know (read as <unk>)


def encode_source(vocab: Vocabularies, sentence: str, max_length: int) -> Encoded:
    ids = vocab.source.encode(sentence, add_eos=False) or [vocab.source.unk_id]
    unknown = vocab.source.unknown_words(sentence) if vocab.source.unk_id in ids else []
    return Encoded(ids[:max_length], max(0, len(ids) - max_length), unknown)


def encode_pairs(vocab: Vocabularies, pairs: Sequence[Pair], max_length: int) -> list[tuple[list[int], list[int]]]:
    return [(encode_source(vocab, s, max_length).ids, vocab.target.encode(t, add_eos=False)[:max_length])
            for s, t in pairs]


@dataclass(frozen=True)
class TranslateTrainConfig(TrainConfig):
    """How to train a translator: the loop's settings with defaults for it, and its own."""

    what: ClassVar[str] = "training config"

    epochs: int = 30
    batch_size: int = 64  # pairs per batch
    optimizer: str = "adamw"
    clip: float | None = 1.0
    lr_decay: float = 0.5
    eval_batch_size: int = 128
    label_smoothing: float = 0.1  # of the training loss (validation's is plain cross-entropy)
    bleu_sentences: int = 400  # validation pairs translated greedily at each evaluation for BLEU (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check = FieldChecks(self)
        check.fraction("label_smoothing")
        check.integer("bleu_sentences", minimum=0)


@torch.no_grad()
def evaluate_loss(model: Translator, encoded: Sequence[tuple[list[int], list[int]]], eos: int,
                  batch_size: int = 128) -> dict[str, float]:
    """Mean cross-entropy per target token (nats) and perplexity, under teacher forcing."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for group in bucketed([(len(s), len(t)) for s, t in encoded], batch_size, 0):
        batch = collate([encoded[i][0] for i in group], [encoded[i][1] for i in group], eos).to(device)
        total += model.loss(batch).item() * batch.tokens
        count += batch.tokens
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


class TranslateTask(Task):
    """Teacher-forced translation of the training pairs, validated on the validation pairs."""

    def __init__(self, splits: dict[str, list[Pair]], vocab: Vocabularies, config: TranslateTrainConfig,
                 max_length: int) -> None:
        if not splits["train"]:
            raise RnnkitError("there are no training pairs")
        if not splits["valid"]:
            raise RnnkitError("there are no validation pairs (give valid.tsv, or more pairs to carve them from)")
        self.vocab, self.config, self.max_length = vocab, config, max_length
        self.train = encode_pairs(vocab, splits["train"], max_length)
        self.valid = encode_pairs(vocab, splits["valid"], max_length)
        every = max(1, len(splits["valid"]) // max(config.bleu_sentences, 1))
        self.bleu_pairs = splits["valid"][::every][: config.bleu_sentences]
        self.groups = bucketed([(len(s), len(t)) for s, t in self.train], config.batch_size, config.seed)
        self.epoch, self.order = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.order = epoch, None

    def batches(self, device: torch.device) -> Draws:
        return Draws(len(self.groups), lambda i: self._batch(i, device))

    def _batch(self, i: int, device: torch.device) -> Batch:
        if self.order is None:  # the batches in another order every epoch, the same on a resumed one
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
            self.order = torch.randperm(len(self.groups), generator=generator).tolist()
        group = self.groups[self.order[i]]
        return collate([self.train[j][0] for j in group], [self.train[j][1] for j in group], self.vocab.eos).to(device)

    def loss(self, model: Translator, batch: Batch, state: Any) -> tuple[Tensor, None]:
        return model.loss(batch, self.config.label_smoothing), None

    def count(self, batch: Batch) -> int:
        return batch.tokens

    def evaluate(self, model: Translator) -> dict[str, float]:
        metrics = evaluate_loss(model, self.valid, self.vocab.eos, self.config.eval_batch_size)
        if self.bleu_pairs:
            hypotheses = [t.text for t in translate(model, self.vocab, [s for s, _ in self.bleu_pairs])]
            metrics["bleu"] = scores(hypotheses, [t for _, t in self.bleu_pairs])["bleu"]
        return metrics


def train(directory: str | Path, splits: dict[str, list[Pair]], vocab: Vocabularies, model_config: TranslateConfig,
          config: TranslateTrainConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train a translator on the train split into the model directory; return the loop's summary."""
    resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = Translator(model_config)
    task = TranslateTask(splits, vocab, config, model_config.max_length)
    return fit(model, task, config, directory, assets=vocab.assets(), resume=resume, callbacks=callbacks)


# --------------------------------------------------------------------- translating


@dataclass(frozen=True)
class Translation:
    source: str
    text: str  # the translation, detokenised
    tokens: list[int]  # its target ids, without the end token
    score: float | None  # total log-probability (beam search; None for greedy)
    encoded: Encoded  # how the source was read


@torch.no_grad()
def translate(model: Translator, vocab: Vocabularies, sentences: Sequence[str], beam: int = 1,
              length_penalty: float = 1.0, batch_size: int = 64) -> list[Translation]:
    """Translate `sentences`, greedily (beam 1) or by beam search with scores normalised by
    length ** length_penalty; batched (sentences of similar length together), in their order."""
    device = next(model.parameters()).device
    encoded = [encode_source(vocab, s, model.config.max_length) for s in sentences]
    results: list[Translation | None] = [None] * len(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(encoded[i].ids))
    for first in range(0, len(order), batch_size):
        group = order[first : first + batch_size]
        ids = [encoded[i].ids for i in group]
        batch = collate(ids, [[]] * len(ids), vocab.eos)
        log_probs, state = model.start(batch.source.to(device), batch.source_lengths.to(device), vocab.eos)
        limit = 2 * max(map(len, ids)) + 10  # a translation rarely runs past twice its source
        found = best_sequences(model, log_probs, state, limit, beam, vocab.eos, length_penalty)
        for i, (tokens, score) in zip(group, found):
            results[i] = Translation(sentences[i], vocab.target.decode(tokens).strip(), tokens, score, encoded[i])
    return results  # type: ignore[return-value]


@torch.no_grad()
def attention_map(model: Translator, vocab: Vocabularies, translation: Translation) -> Tensor:
    """The attention weights (T + 1, S) the model gives each source token while writing each token
    of `translation` (and its end): the decoder re-reads its own output, as it did decoding it."""
    batch = collate([translation.encoded.ids], [translation.tokens], vocab.eos).to(next(model.parameters()).device)
    _, weights = model(batch)  # (T + 1, 1, S)
    return weights[:, 0].cpu()


def scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of detokenised hypotheses against one reference each (sacrebleu, its
    default 13a tokenisation), and sacrebleu's signatures of both."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {"bleu": bleu.corpus_score(list(hypotheses), [list(references)]).score,
            "chrf": chrf.corpus_score(list(hypotheses), [list(references)]).score,
            "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}}


def evaluate(model: Translator, vocab: Vocabularies, pairs: Sequence[Pair], beam: int = 5,
             length_penalty: float = 1.0) -> dict[str, Any]:
    """BLEU and chrF of translating the source sides of `pairs` against their target sides."""
    if not pairs:
        raise RnnkitError("there are no pairs to evaluate")
    hypotheses = [t.text for t in translate(model, vocab, [s for s, _ in pairs], beam, length_penalty)]
    return {**scores(hypotheses, [t for _, t in pairs]), "pairs": len(pairs), "beam": beam}


def finish_run(directory: str | Path, splits: dict[str, list[Pair]], summary: dict[str, Any], beam: int = 5
               ) -> dict[str, Any]:
    """Translate the test split with the best model (beam search); write and return results.json."""
    directory = Path(directory)
    model, vocab = load_model(directory, summary["device"], kind=Translator.kind)
    results = dict(summary)
    if splits["test"]:
        test = evaluate(model, vocab, splits["test"], beam)
        results.update({"test_bleu": test["bleu"], "test_chrf": test["chrf"], "test_pairs": test["pairs"],
                        "test_beam": beam, "signature": test["signature"]})
    write_json(directory / "results.json", results)
    return results
