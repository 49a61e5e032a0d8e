"""Training a language model: the language-modelling task on the generic loop.

The corpus is cut into B parallel streams and read in windows of `bptt` tokens (`BPTTBatches`);
the state the model ends a window with starts the next one, so the memory reaches back across
windows while backpropagation stops at their edges (truncated BPTT). Validation reads the
validation split the same way; the best model's start state for prompts is calibrated on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...data import BPTTBatches, Corpus
from ...configs import FieldChecks
from ...errors import ParameterError, RnnkitError
from ...nn.cells import State
from ...io import write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model
from ...training.loop import Task, TrainConfig, fit, resolve_device
from .model import LMConfig, RNNLanguageModel, require_eval

TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class LMTrainConfig(TrainConfig):
    """How to train a language model: the loop's settings and the window of truncated BPTT."""

    what: ClassVar[str] = "training config"

    bptt: int = 35  # T, steps per window of truncated backpropagation

    def __post_init__(self) -> None:
        super().__post_init__()
        FieldChecks(self).integer("bptt", minimum=1)


@torch.no_grad()
def evaluate(
    model: RNNLanguageModel, ids: Any, batch_size: int = 10, bptt: int = 35, device: Any = None
) -> dict[str, float]:
    """Mean cross-entropy over `ids` (state carried through), as loss (nats per token), perplexity
    and tokens. The model runs as it is, in eval mode (`load_model` returns it so)."""
    require_eval(model)
    device = device or next(model.parameters()).device
    if len(ids) < 2:
        raise RnnkitError(f"the evaluation text has {len(ids)} token(s); it needs at least 2")
    bptt = min(bptt, len(ids) - 1)
    batch_size = max(1, min(batch_size, len(ids) // (bptt + 1)))  # short texts: fewer streams
    batches = BPTTBatches(ids, batch_size, bptt, device, name="evaluation text")
    state = model.init_state(batches.batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for x, y in batches:
        loss, state = model.loss(x, y, state)
        total += loss.double() * y.numel()
        count += y.numel()
    loss = total.item() / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


class LMTask(Task):
    """Next-token prediction on a corpus's training split, validated on its validation split."""

    def __init__(self, corpus: Corpus, config: LMTrainConfig) -> None:
        self.corpus, self.config = corpus, config
        self.part = (0, 1)  # the share of the B streams this process reads: the k-th of n

    def shard(self, rank: int, world_size: int) -> None:
        if self.config.batch_size % world_size:
            raise ParameterError("batch_size", f"must be a multiple of the {world_size} processes that share its "
                                               f"streams, got {self.config.batch_size}")
        self.part = (rank, world_size)

    def batches(self, device: torch.device) -> BPTTBatches:
        return BPTTBatches(self.corpus.train, self.config.batch_size, self.config.bptt, device, name="training split",
                           shard=self.part)

    def start_state(self, model: RNNLanguageModel) -> State:
        return model.init_state(self.config.batch_size // self.part[1])  # h: (L, B, H), B this process's streams

    def loss(self, model: RNNLanguageModel, batch: tuple[Tensor, Tensor], state: State) -> tuple[Tensor, State]:
        x, y = batch
        return model.loss(x, y, state)

    def count(self, batch: tuple[Tensor, Tensor]) -> int:
        return batch[1].numel()

    def evaluate(self, model: RNNLanguageModel) -> dict[str, float]:
        return evaluate(model, self.corpus.valid, self.config.eval_batch_size, self.config.bptt)

    def on_best(self, model: RNNLanguageModel) -> None:
        model.calibrate_start_state(self.corpus.valid, self.corpus.tokenizer.line_end_id)


def train(
    directory: str | Path,
    corpus: Corpus,
    model_config: LMConfig,
    config: LMTrainConfig,
    resume: bool = False,
    callback: Callback | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train a language model on `corpus` into the model directory; return the loop's summary
    (see `rnnkit.training.fit`): "steps", "epochs_done", "best_valid", "stopped", "history",
    "world_size". `callback` and `callbacks` see the run's events."""
    if not isinstance(config, LMTrainConfig):
        raise TypeError(f"train needs an LMTrainConfig (it has bptt), got {type(config).__name__}")
    resolve_device(config.device)  # before building anything
    torch.manual_seed(config.seed)
    model = RNNLanguageModel(model_config)
    return fit(
        model, LMTask(corpus, config), config, directory, assets={TOKENIZER: corpus.tokenizer}, resume=resume,
        callbacks=[*([] if callback is None else [callback]), *callbacks],
    )


def check_vocabulary(config: LMConfig, tokenizer: Any) -> None:
    if tokenizer.vocab_size != config.vocab_size:
        raise RnnkitError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}")


def finish_run(directory: str | Path, corpus: Corpus, config: LMTrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the best model on the test split; write and return results.json (the summary and
    the test figures), whose presence marks a finished run."""
    directory = Path(directory)
    model, _ = load_model(directory, summary["device"], kind=RNNLanguageModel.kind)
    test = evaluate(model, corpus.test, config.eval_batch_size, config.bptt)
    results = {**summary, "test_loss": test["loss"], "test_perplexity": test["perplexity"], "test_tokens": test["tokens"]}
    write_json(directory / "results.json", results)
    return results
