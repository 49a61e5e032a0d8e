"""Memory over distance: how far back can a model carry the word that decides the next one?

Each model is trained as a language model on the same household sentences (see
`rnnkit.demos.household.corpus`) with the same budget, then fills the blank of held-out sentences:

    I grabbed the slice of bread on the counter while the dog barked and turned on the ____
                           \\___/ \\___________________________________________/
                            cue        distance: words between cue and blank

The accuracy at the blank (argmax over the vocabulary = the right device) is measured per
distance bucket. A model with a fixed window of the n previous words (Bengio et al. 2003) sees the
cue only while distance < n, so beyond that it can do no better than chance, 1 / (number of
devices); a recurrent network must keep the cue in its state for the whole distance.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from ...apps.lm.model import LMConfig, RNNLanguageModel
from ...configs import FieldChecks
from ...data import WordTokenizer, train_tokenizer_from_text
from ...diagnostics.plots import CELL_COLORS
from ...errors import ParameterError
from ...io import save_figure, write_csv, write_json
from ...training.loop import Draws, Task, TrainConfig, eval_mode, fit
from . import corpus as household

MODELS = ("elman", "lstm", "gru", "window")  # the default line-up; any registered cell may join it
FILES = ("memory.json", "memory.csv", "memory.png")
DEFAULT_BUCKETS = (4, 5, 10, 20, 30)  # 4 (the shortest distance), 5-9, 10-19, 20-29, 30-39
IGNORE = -100  # cross-entropy's ignore_index, for the padding after a sentence's end


class WindowLM(nn.Module):
    """A feed-forward language model over a fixed window of the n previous tokens (Bengio et al.
    2003): y_t = V tanh(H [e(w_{t-n+1}); ...; e(w_t)] + d) + c. Positions before the start read `pad`.

    forward(ids (T, B)) -> (logits (T, B, V), None), the same interface as RNNLanguageModel.
    """

    def __init__(self, vocab_size: int, window: int, embedding_size: int, hidden_size: int, pad: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"the window needs at least 1 token, got {window}")
        self.window, self.pad = window, pad
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.hidden = nn.Linear(window * embedding_size, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, None]:
        T, B = ids.shape
        padded = torch.cat([ids.new_full((self.window - 1, B), self.pad), ids])  # (n - 1 + T, B)
        windows = padded.unfold(0, self.window, 1)  # (T, B, n): tokens t-n+1 .. t
        x = self.embedding(windows).reshape(T, B, -1)  # (T, B, n E)
        return self.head(torch.tanh(self.hidden(x))), None


@dataclass(frozen=True)
class MemoryConfig:
    """Data, sizes and the training budget, the same for every model."""

    max_distance: int = 39  # longest cue-blank distance in training and test sentences
    buckets: tuple[int, ...] | None = None  # lower edges of the distance buckets; None: DEFAULT_BUCKETS up to max_distance
    train_sentences: int = 6000
    test_sentences: int = 1200
    hidden_size: int = 128  # H of the recurrent models and of the window model's hidden layer
    embedding_size: int = 32
    window: int = 5  # n, the window model's previous tokens
    steps: int = 4000  # AdamW steps for each model
    batch_size: int = 32  # sentences per step
    lr: float = 5e-3
    clip: float = 1.0
    seed: int = 0  # seeds weights, batches and the training sentences; the test set uses seed + 1

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        for name in ("train_sentences", "test_sentences", "hidden_size", "embedding_size", "window", "batch_size"):
            check.integer(name, minimum=1)
        check.integer("steps", minimum=0)
        check.integer("max_distance", minimum=household.MIN_DISTANCE)
        check.number("lr", positive=True)
        check.number("clip", positive=True)
        check.seed()
        if self.buckets is None:
            object.__setattr__(self, "buckets", tuple(e for e in DEFAULT_BUCKETS if e <= self.max_distance))
        edges = list(self.buckets)
        if not edges or edges != sorted(set(edges)) or edges[0] > household.MIN_DISTANCE or edges[-1] > self.max_distance:
            raise ParameterError("buckets", f"must be increasing lower edges, the first at most {household.MIN_DISTANCE} "
                                 f"and the last at most max_distance {self.max_distance}, got {edges}")

    def bucket_labels(self) -> list[str]:
        """'4', '5-9', ..., from the lower edges, the first starting at MIN_DISTANCE."""
        lows = [max(self.buckets[0], household.MIN_DISTANCE), *self.buckets[1:]]
        highs = [b - 1 for b in self.buckets[1:]] + [self.max_distance]
        return [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(lows, highs)]


@dataclass
class MemoryResult:
    """One model's accuracy at the blank: per bucket (with the number of test sentences in each)
    and per distance."""

    model: str
    buckets: list[str]
    accuracy: list[float | None]  # None: no test sentence in the bucket
    counts: list[int]
    by_distance: dict[int, float]
    train_loss: float  # mean over the last tenth of the steps
    parameters: int
    seconds: float
    losses: list[float] = field(repr=False, default_factory=list)  # mean training loss every 50 steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryData:
    """Household sentences as padded id tensors, and the test set's prompts."""

    tokenizer: WordTokenizer
    train: Tensor  # (N, L + 1): <eos> sentence <eos>, then IGNORE
    prompts: Tensor  # (M, P): <eos> prompt, then <eos> as padding (never read: see `accuracy`)
    prompt_lengths: Tensor  # (M,)
    targets: Tensor  # (M,): the id of each prompt's device word
    distances: Tensor  # (M,)
    chance: float  # 1 / number of devices


def make_data(config: MemoryConfig) -> MemoryData:
    """Training sentences from `config.seed`, test sentences from seed + 1, one word tokenizer."""
    train = household.generate(config.train_sentences, config.max_distance, config.seed)
    test = household.generate(config.test_sentences, config.max_distance, config.seed + 1)
    tokenizer = train_tokenizer_from_text("word", [s.text for s in train])
    assert isinstance(tokenizer, WordTokenizer)
    eos = tokenizer.eos_id
    sentences = [[eos, *tokenizer.encode(s.text)] for s in train]
    prompts = [[eos, *tokenizer.encode(s.prompt, add_eos=False)] for s in test]
    return MemoryData(
        tokenizer=tokenizer,
        train=pad_sequence([torch.tensor(r) for r in sentences], batch_first=True, padding_value=IGNORE),
        prompts=pad_sequence([torch.tensor(p) for p in prompts], batch_first=True, padding_value=eos),
        prompt_lengths=torch.tensor([len(p) for p in prompts]),
        targets=torch.tensor([tokenizer.id(s.target) for s in test]),
        distances=torch.tensor([s.distance for s in test]),
        chance=1.0 / len(household.DEVICES),
    )


def make_model(name: str, vocab_size: int, config: MemoryConfig, pad: int) -> nn.Module:
    """One layer of the named cell (any registered one) with an embedding and an output layer, or
    the window model."""
    if name == "window":
        return WindowLM(vocab_size, config.window, config.embedding_size, config.hidden_size, pad)
    return RNNLanguageModel(LMConfig(vocab_size, cell=name, hidden_size=config.hidden_size,
                                     embedding_size=config.embedding_size, num_layers=1))


class HouseholdTask(Task):
    """Next-token cross-entropy on random batches of whole sentences, each read from the zero
    state (one "epoch" of `config.steps` batches); validated on the blank of the test prompts."""

    def __init__(self, data: MemoryData, config: MemoryConfig) -> None:
        self.data, self.config = data, config
        self.generator = torch.Generator().manual_seed(config.seed)

    def batches(self, device: torch.device) -> Sequence[tuple[Tensor, Tensor]]:
        return Draws(self.config.steps, self._draw)

    def _draw(self, i: int) -> tuple[Tensor, Tensor]:
        rows = self.data.train[torch.randint(len(self.data.train), (self.config.batch_size,), generator=self.generator)]
        rows = rows[:, : int((rows != IGNORE).sum(1).max())].T  # (L + 1, B), time first
        return rows[:-1].clamp(min=0), rows[1:]  # the padding read as ids is never scored

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> tuple[Tensor, None]:
        x, y = batch
        logits, _ = model(x)  # (L, B, V)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        logits = blank_logits(model, self.data)
        return {"loss": float(F.cross_entropy(logits, self.data.targets)),
                "accuracy": float((logits.argmax(-1) == self.data.targets).float().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def train_model(
    model: nn.Module, data: MemoryData, config: MemoryConfig, progress: Callable[[int], None] | None = None
) -> list[float]:
    """`config.steps` AdamW steps (PyTorch's default weight decay, 0.01) of the `HouseholdTask` on the
    training loop; returns the mean loss of every 50 steps. `progress(steps)` follows it."""
    losses: list[float] = []
    done = 0

    def on_event(event: str, info: dict[str, Any]) -> None:
        nonlocal done
        if event == "step":
            losses.append(info["loss"])
            if progress is not None:
                progress(info["step"] - done)
            done = info["step"]

    if config.steps == 0:
        return losses
    train = TrainConfig(epochs=1, batch_size=config.batch_size, optimizer="adamw", lr=config.lr, weight_decay=0.01,
                        clip=config.clip, schedule="none", checkpoint_every=None, log_every=50, device="cpu")
    fit(model, HouseholdTask(data, config), train, callbacks=[on_event])
    return losses


@torch.no_grad()
def blank_logits(model: nn.Module, data: MemoryData, batch_size: int = 256) -> Tensor:
    """The model's logits (M, V) for the word after each test prompt, the model run as it is."""
    logits = []
    for start in range(0, len(data.prompts), batch_size):
        prompts = data.prompts[start : start + batch_size]
        lengths = data.prompt_lengths[start : start + batch_size]
        out, _ = model(prompts[:, : int(lengths.max())].T)  # (P, B, V)
        # a prompt's last position sees only the prompt: the models are causal, padding comes after
        logits.append(out[lengths - 1, torch.arange(len(prompts))])  # (B, V)
    return torch.cat(logits)


def blank_correct(model: nn.Module, data: MemoryData, batch_size: int = 256) -> Tensor:
    """(M,) bool: whether the most probable next word after each test prompt is its device."""
    return blank_logits(model, data, batch_size).argmax(-1) == data.targets


def measure(
    name: str, data: MemoryData, config: MemoryConfig, progress: Callable[[int], None] | None = None
) -> MemoryResult:
    """Train the named model on `data` and measure its accuracy at the blank per bucket."""
    torch.manual_seed(config.seed)
    model = make_model(name, data.tokenizer.vocab_size, config, pad=data.tokenizer.eos_id)
    started = time.perf_counter()
    losses = train_model(model, data, config, progress)
    with eval_mode(model):
        correct = blank_correct(model, data).float()
    edges = [*config.buckets, math.inf]
    accuracy, counts = [], []
    for lo, hi in itertools.pairwise(edges):
        inside = (data.distances >= lo) & (data.distances < hi)
        counts.append(int(inside.sum()))
        accuracy.append(float(correct[inside].mean()) if inside.any() else None)
    by_distance = {int(d): float(correct[data.distances == d].mean()) for d in data.distances.unique()}
    tail = losses[-max(1, len(losses) // 10) :] if losses else [math.nan]
    return MemoryResult(
        model=name, buckets=config.bucket_labels(), accuracy=accuracy, counts=counts, by_distance=by_distance,
        train_loss=sum(tail) / len(tail), parameters=sum(p.numel() for p in model.parameters()),
        seconds=time.perf_counter() - started, losses=losses,
    )


def plot_memory(results: Sequence[MemoryResult], chance: float, window: int | None = None) -> Figure:
    """Accuracy at the blank against the distance bucket, one line per model, chance dashed."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    labels = results[0].buckets
    x = np.arange(len(labels))
    for r in results:
        name = f"window (n = {window})" if r.model == "window" and window else r.model
        ax.plot(x, 100 * np.array(r.accuracy, dtype=float), "o-", color=CELL_COLORS.get(r.model), lw=1.5, label=name)
    ax.axhline(100 * chance, color="grey", lw=1.0, ls="--", label=f"chance ({100 * chance:.1f}%)")
    ax.set_xticks(x, labels)
    ax.set(xlabel="words between the cue and the blank", ylabel="accuracy at the blank (%)", ylim=(0, 103),
           title="Memory over distance: 'I picked up the <object> ... and turned on the ___'")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    return fig


def run_memory(
    config: MemoryConfig, models: list[str], out: Path, progress: Callable[[str, int], None] | None = None
) -> dict[str, Any]:
    """Train and measure every model, write memory.csv, .png and .json into `out`; return the
    report {"config", "chance", "buckets", "results": [...], "files"}. `progress(model, steps)`
    follows the training."""
    data = make_data(config)
    results = []
    for name in models:
        results.append(measure(name, data, config, progress=None if progress is None else partial(progress, name)))
    report = {
        "config": asdict(config), "chance": data.chance, "test_sentences": len(data.targets),
        "buckets": config.bucket_labels(), "results": [r.to_dict() for r in results],
        "files": {name.split(".")[1]: str(out / name) for name in FILES},
    }
    write_csv(out / "memory.csv", ["model", *report["buckets"], "parameters", "seconds"],
              [[r.model, *("" if a is None else f"{a:.4f}" for a in r.accuracy), r.parameters, f"{r.seconds:.1f}"] for r in results])
    save_figure(out / "memory.png", plot_memory(results, data.chance, config.window), dpi=100)
    write_json(out / "memory.json", report)  # last: the demo takes its presence for a finished run
    return report


def format_table(report: dict[str, Any]) -> str:
    """The accuracy table of a `run_memory` report, as text."""
    config = report["config"]
    lines = [
        (f"accuracy at the blank by words between cue and blank ({report['test_sentences']} test sentences, "
         f"chance {report['chance']:.1%}; {config['steps']} steps of {config['batch_size']} sentences each)"),
        f"{'model':<12}" + "".join(f"{b:>8}" for b in report["buckets"]) + f"{'params':>9}{'seconds':>9}",
    ]
    for r in report["results"]:
        name = f"window n={config['window']}" if r["model"] == "window" else r["model"]
        cells = "".join(f"{'-':>8}" if a is None else f"{a:>8.1%}" for a in r["accuracy"])
        lines.append(f"{name:<12}{cells}{r['parameters']:>9}{r['seconds']:>9.1f}")
    return "\n".join(lines)
