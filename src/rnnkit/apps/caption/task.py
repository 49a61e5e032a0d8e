"""Training and using a captioner: images in memory, the task on the generic loop, describing
images greedily or by beam search, BLEU-4 against every reference (sacrebleu) and exact match."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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
from ..translate.data import PAD, bucketed
from .data import Example, read_image
from .model import CaptionConfig, Captioner

TOKENIZER = "tokenizer.json"


def build_vocabulary(examples: Sequence[Example]) -> Tokenizer:
    """A word tokenizer of every word of the training captions (one caption a line)."""
    return train_tokenizer_from_text("word", ["\n".join(c for e in examples for c in e.captions) + "\n"])


def load_images(examples: Sequence[Example], size: tuple[int, int]) -> Tensor:
    """(N, 3, H, W) uint8: every image read once and kept in memory."""
    return torch.from_numpy(np.stack([read_image(e.image, size) for e in examples])).permute(0, 3, 1, 2).contiguous()


def as_input(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1]."""
    return images.float() / 255


def frame(captions: Sequence[Sequence[int]], eos: int) -> Tensor:
    """(T + 1, B): each caption between two end tokens, padded with PAD."""
    T = max(map(len, captions)) + 2
    out = torch.full((T, len(captions)), PAD, dtype=torch.long)
    for b, c in enumerate(captions):
        out[: len(c) + 2, b] = torch.tensor([eos, *c, eos], dtype=torch.long)
    return out


@dataclass(frozen=True)
class CaptionTrainConfig(TrainConfig):
    """How to train a captioner: the loop's settings with defaults for it, and its own."""

    what: ClassVar[str] = "training config"

    epochs: int = 30
    batch_size: int = 64  # (image, caption) pairs per batch, about: all the captions of B / (captions per image) images
    optimizer: str = "adamw"
    clip: float | None = 1.0
    lr_decay: float = 0.5
    patience: int = 2  # evaluations without improvement before the rate is halved
    eval_batch_size: int = 128
    attention_penalty: float = 0.1  # lambda of the doubly stochastic penalty
    bleu_images: int = 300  # validation images captioned greedily at each evaluation (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check = FieldChecks(self)
        check.number("attention_penalty")
        check.integer("bleu_images", minimum=0)


class CaptionTask(Task):
    """Every (image, reference caption) pair of the training split; a batch holds all the captions
    of images whose captions have similar lengths, so that each image is encoded once per batch."""

    def __init__(self, splits: dict[str, list[Example]], tokenizer: Tokenizer, model_config: CaptionConfig,
                 config: CaptionTrainConfig) -> None:
        if not splits["train"] or not splits["valid"]:
            raise RnnkitError("captioning needs training and validation images")
        size = (model_config.image_height, model_config.image_width)
        self.tokenizer, self.config, self.eos = tokenizer, config, tokenizer.line_end_id
        limit = model_config.max_length
        self.images = load_images(splits["train"], size)
        self.captions = [[tokenizer.encode(c, add_eos=False)[:limit] for c in e.captions] for e in splits["train"]]
        self.valid = splits["valid"]
        self.valid_images = load_images(self.valid, size)
        self.valid_captions = [[tokenizer.encode(c, add_eos=False)[:limit] for c in e.captions] for e in self.valid]
        per_image = sum(map(len, self.captions)) / len(self.captions)
        self.groups = bucketed([(len(c), sum(map(len, c)) // len(c)) for c in self.captions],
                               max(1, round(config.batch_size / per_image)), config.seed)
        self.epoch, self.order = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.order = epoch, None

    def batches(self, device: torch.device) -> Draws:
        return Draws(len(self.groups), lambda i: self._batch(i, device))

    def _batch(self, i: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if self.order is None:  # another order every epoch, the same on a resumed one
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
            self.order = torch.randperm(len(self.groups), generator=generator).tolist()
        return _gather(self.images, self.captions, self.groups[self.order[i]], self.eos, device)

    def loss(self, model: Captioner, batch: tuple[Tensor, Tensor, Tensor], state: Any) -> tuple[Tensor, None]:
        images, which, captions = batch
        return model.loss(images, captions, self.config.attention_penalty, which), None

    def count(self, batch: tuple[Tensor, Tensor, Tensor]) -> int:
        return int((batch[2][1:] != PAD).sum())  # words predicted

    def evaluate(self, model: Captioner) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        step = max(1, self.config.eval_batch_size // 4)
        for start in range(0, len(self.valid), step):
            images, which, captions = _gather(self.valid_images, self.valid_captions,
                                              range(start, min(start + step, len(self.valid))), self.eos, device)
            words = int((captions[1:] != PAD).sum())
            total += model.loss(images, captions, which=which).item() * words
            count += words
        metrics = {"loss": total / count, "perplexity": math.exp(min(total / count, 700.0))}
        if self.config.bleu_images:
            shown = self.valid[: self.config.bleu_images]
            captions = describe(model, self.tokenizer, self.valid_images[: len(shown)])
            metrics.update(scores([c.text for c in captions], [e.captions for e in shown]))
        return metrics


def _gather(images: Tensor, captions: list[list[list[int]]], group: Sequence[int], eos: int, device: torch.device
            ) -> tuple[Tensor, Tensor, Tensor]:
    """The images of `group` once each (K, 3, H, W), the image of each of their captions (B,), and
    the captions framed (T + 1, B)."""
    which = torch.tensor([k for k, i in enumerate(group) for _ in captions[i]])
    framed = frame([c for i in group for c in captions[i]], eos)
    return as_input(images[torch.tensor(list(group))]).to(device), which.to(device), framed.to(device)


def train(directory: str | Path, splits: dict[str, list[Example]], tokenizer: Tokenizer, model_config: CaptionConfig,
          config: CaptionTrainConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train a captioner on the train split into the model directory; return the loop's summary."""
    resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = Captioner(model_config)
    task = CaptionTask(splits, tokenizer, model_config, config)
    return fit(model, task, config, directory, assets={TOKENIZER: tokenizer}, resume=resume, callbacks=callbacks)


@dataclass(frozen=True)
class Caption:
    text: str
    tokens: list[int]  # without the end token
    score: float | None  # total log-probability (beam search; None for greedy)


@torch.no_grad()
def describe(model: Captioner, tokenizer: Tokenizer, images: Tensor, beam: int = 1, batch_size: int = 128
             ) -> list[Caption]:
    """Captions of uint8 images (N, 3, H, W) of the model's size, greedily (beam 1) or by beam search."""
    device, eos = next(model.parameters()).device, tokenizer.line_end_id
    captions = []
    for start in range(0, len(images), batch_size):
        log_probs, state = model.start(as_input(images[start : start + batch_size]).to(device), eos)
        for tokens, score in best_sequences(model, log_probs, state, model.config.max_length, beam, eos):
            captions.append(Caption(tokenizer.decode(tokens).strip(), tokens, score))
    return captions


@torch.no_grad()
def attention_map(model: Captioner, tokenizer: Tokenizer, image: Tensor, caption: Caption) -> Tensor:
    """Where the model looks while writing each word of `caption` (and its end): (T + 1, h, w)."""
    device = next(model.parameters()).device
    _, alphas = model(as_input(image[None]).to(device), frame([caption.tokens], tokenizer.line_end_id).to(device))
    return alphas[:, 0].reshape(len(alphas), *model.config.grid).cpu()


def scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 against every reference of each image (sacrebleu; missing references are
    None) and exact match (the caption is one of the references), in percent."""
    from sacrebleu.metrics import BLEU

    most = max(map(len, references))
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]
    bleu = BLEU().corpus_score(list(hypotheses), streams).score
    exact = 100 * sum(h in refs for h, refs in zip(hypotheses, references)) / len(references)
    return {"bleu4": bleu, "exact": exact}


def evaluate(model: Captioner, tokenizer: Tokenizer, examples: Sequence[Example], beam: int = 1) -> dict[str, Any]:
    """BLEU-4 and exact match of captioning `examples`, and how many images."""
    if not examples:
        raise RnnkitError("there are no captioned images to evaluate")
    images = load_images(examples, (model.config.image_height, model.config.image_width))
    captions = describe(model, tokenizer, images, beam)
    return {**scores([c.text for c in captions], [e.captions for e in examples]), "images": len(examples), "beam": beam}


def finish_run(directory: str | Path, splits: dict[str, list[Example]], summary: dict[str, Any], beam: int = 3
               ) -> dict[str, Any]:
    """Caption the test split with the best model; write and return results.json."""
    directory = Path(directory)
    model, tokenizer = load_model(directory, summary["device"], kind=Captioner.kind)
    results = dict(summary)
    if splits["test"]:
        test = evaluate(model, tokenizer, splits["test"], beam)
        results.update({"test_bleu4": test["bleu4"], "test_exact": test["exact"], "test_images": test["images"],
                        "test_beam": beam})
    write_json(directory / "results.json", results)
    return results


@torch.no_grad()
def attention_on_objects(model: Captioner, tokenizer: Tokenizer, examples: Sequence[Example]
                         ) -> dict[str, float | None]:
    """Does the model look at what it names? For every colour or shape word of a scene's greedy
    caption that names one object of the scene alone, the share of that word's attention inside
    the object's box; and the share the box would get from attention spread evenly (its area)."""
    from .data import COLOURS, SHAPES
    from .plots import upsample

    size = (model.config.image_height, model.config.image_width)
    images = load_images(examples, size)
    inside, chance = [], []
    for example, image, caption in zip(examples, images, describe(model, tokenizer, images)):
        maps = upsample(attention_map(model, tokenizer, image, caption), size)  # (T + 1, H, W)
        for t, word in enumerate(caption.text.split()):
            key = "colour" if word in COLOURS else "shape" if word in SHAPES else None
            named = [o for o in example.objects if key and o[key] == word]
            if len(named) != 1:
                continue
            x0, y0, x1, y1 = named[0]["box"]
            inside.append(float(maps[t, y0 : y1 + 1, x0 : x1 + 1].sum()))
            chance.append((y1 + 1 - y0) * (x1 + 1 - x0) / (size[0] * size[1]))
    if not inside:  # no caption names the colour or shape of one object alone: nothing to measure
        return {"share_inside": None, "share_if_uniform": None, "words": 0}
    return {"share_inside": sum(inside) / len(inside), "share_if_uniform": sum(chance) / len(chance),
            "words": len(inside)}
