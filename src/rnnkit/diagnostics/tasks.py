"""Long-range memory tasks: synthetic problems that only a network with a long memory can solve.

The adding problem (Hochreiter & Schmidhuber 1997, section 5.4; in the form of Arjovsky et al.
2016, section 4.2): T random numbers, two of them marked, one in each half; the target is
their sum. Always predicting 1, the mean of the sum, gives MSE = Var(u + u') = 2/12 = 1/6.

    values  0.31 0.77 0.08 ... 0.52 0.90 ...        target 0.77 + 0.90 = 1.67
    marks   0    1    0    ... 0    1    ...

The copy-memory task (Arjovsky et al. 2016, section 4.1): 10 symbols from 8, T - 1 blanks, a
marker, 10 more blanks; the network must output blanks until the marker, then the 10 symbols.
A memoryless model outputs blanks, then guesses uniformly: cross-entropy 10 log(8) / (T + 20).

    input   3 1 4 1 5 8 2 6 5 3  _ _ ... _  :  _ _ _ _ _ _ _ _ _ _
    target  _ _ _ _ _ _ _ _ _ _  _ _ ... _  _  3 1 4 1 5 8 2 6 5 3
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..configs import FieldChecks
from ..nn.recurrent import Recurrent
from ..training.loop import Task as LoopTask
from ..training.loop import Draws, TrainConfig, eval_mode, fit

COPY_SYMBOLS = 8  # data symbols 1..8; 0 is the blank and 9 the marker
COPY_LENGTH = 10  # symbols to remember


def adding_problem(T: int, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw `batch` adding-problem sequences of length T >= 2.

    Returns x (T, B, 2), channel 0 the values ~ U(0, 1) and channel 1 the two marks (one in
    t < T/2, one in t >= T/2), and the targets y (B,), the sum of the two marked values.
    """
    _check_positive(T=T, batch=batch)
    if T < 2:
        raise ValueError(f"the adding problem needs T >= 2 to mark two numbers, got T={T}")
    values = torch.rand(T, batch, generator=generator)
    half = T // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, T, (batch,), generator=generator)
    marks = torch.zeros(T, batch)
    cols = torch.arange(batch)
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    y = values[first, cols] + values[second, cols]
    return torch.stack([values, marks], dim=-1), y  # (T, B, 2), (B,)


def copy_memory(T: int, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw `batch` copy-memory sequences with a delay of T >= 1 steps.

    Returns x (T + 20, B, 10), one-hot over blank 0, symbols 1..8 and marker 9, and the
    targets y (T + 20, B) in 0..8: blanks, then the 10 symbols after the marker.
    """
    _check_positive(T=T, batch=batch)
    n = COPY_LENGTH
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (n, batch), generator=generator)
    ids = torch.zeros(T + 2 * n, batch, dtype=torch.long)
    ids[:n] = symbols
    ids[T + n - 1] = COPY_SYMBOLS + 1  # the marker, after T - 1 blanks
    y = torch.zeros_like(ids)
    y[T + n :] = symbols
    return F.one_hot(ids, COPY_SYMBOLS + 2).float(), y  # (T + 20, B, 10), (T + 20, B)


def copy_baseline(T: int) -> float:
    """Cross-entropy of the memoryless strategy: 10 log(8) / (T + 20)."""
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (T + 2 * COPY_LENGTH)


@dataclass(frozen=True)
class Task:
    """A memory task: how to draw data, score a model's outputs, and what chance is.

    loss(out, y) takes the head's outputs at every step, (T', B, output_size).
    solved(loss, accuracy) says whether a test result counts as solving the task.
    """

    name: str
    input_size: int
    output_size: int
    generate: Callable[[int, int, torch.Generator | None], tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]
    accuracy: Callable[[Tensor, Tensor], float] | None
    baseline: Callable[[int], float]
    solved: Callable[[float, float | None], bool]
    criterion: str


def _adding_loss(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out[-1, :, 0], y)  # only the last step is scored


def _copy_loss(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out.flatten(0, 1), y.flatten())  # (T' * B, C) against (T' * B,)


def _copy_accuracy(out: Tensor, y: Tensor) -> float:
    """Fraction of the 10 recalled symbols predicted right."""
    recalled = slice(-COPY_LENGTH, None)
    return (out[recalled].argmax(dim=-1) == y[recalled]).float().mean().item()


TASKS: dict[str, Task] = {
    "adding": Task(
        "adding", 2, 1, adding_problem, _adding_loss, None, lambda T: 1 / 6,
        lambda loss, acc: loss < 0.01, "test MSE < 0.01",
    ),
    "copy": Task(
        "copy", COPY_SYMBOLS + 2, COPY_SYMBOLS + 1, copy_memory, _copy_loss, _copy_accuracy,
        copy_baseline, lambda loss, acc: acc is not None and acc >= 0.99,
        ">= 99% of recalled symbols right",
    ),
}


class TaskModel(nn.Module):
    """The smallest model for a memory task: Recurrent -> linear head at every step.

    Shapes: x (T, B, E) -> outputs (T, B, output_size).
    """

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.rnn = Recurrent(cell, input_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)  # (T, B, H)
        return self.head(y)


@dataclass(frozen=True)
class TaskConfig:
    """The training budget, the same for every cell and every T."""

    hidden_size: int = 64  # H
    num_layers: int = 1  # L
    steps: int = 500  # optimiser steps
    batch_size: int = 32  # sequences per step, fresh every step
    lr: float = 1e-3  # Adam's learning rate
    clip: float = 1.0  # largest gradient norm
    test_size: int = 500  # test sequences, drawn once per T (the same for every cell)
    eval_every: int = 50  # steps between test evaluations
    seed: int = 0  # seeds the initial weights, the training stream and the test set

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        for name in ("hidden_size", "num_layers", "batch_size", "test_size", "eval_every"):
            check.integer(name, minimum=1)
        check.integer("steps", minimum=0)
        check.number("lr", positive=True)
        check.number("clip", positive=True)
        check.seed()


@dataclass(frozen=True)
class TaskResult:
    """One training run: the curves and the final test numbers.

    eval_steps[i] is the number of steps taken when test_loss[i] was measured (0: untrained).
    train_loss[i] is the mean training loss over the steps since the evaluation before (None at 0).
    """

    task: str
    cell: str
    T: int
    baseline: float
    eval_steps: list[int]
    test_loss: list[float]
    train_loss: list[float | None]
    accuracy: float | None
    solved: bool
    seconds: float

    @property
    def final_loss(self) -> float:
        return self.test_loss[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"final_loss": self.final_loss}


def held_out(task: Task, T: int, config: TaskConfig) -> tuple[Tensor, Tensor]:
    """The test sequences for (task, T): drawn from the seed, so every cell sees the same."""
    return task.generate(T, config.test_size, torch.Generator().manual_seed(config.seed))


def evaluate_task(model: TaskModel, task: Task, x: Tensor, y: Tensor) -> tuple[float, float | None]:
    """Test loss and (for copy) recall accuracy of the model as it is (eval mode: no dropout)."""
    with torch.no_grad():
        out = model(x)
    return task.loss(out, y).item(), None if task.accuracy is None else task.accuracy(out, y)


class SyntheticTask(LoopTask):
    """A memory task on the training loop: `steps` fresh batches (one "epoch"), drawn from a
    stream seeded with seed + 1; validated on the held-out sequences."""

    def __init__(self, task: Task, T: int, config: TaskConfig, test: tuple[Tensor, Tensor]) -> None:
        self.task, self.T, self.config, self.test = task, T, config, test
        self.stream = torch.Generator().manual_seed(config.seed + 1)

    def batches(self, device: torch.device) -> Sequence[tuple[Tensor, Tensor]]:
        dtype = self.test[0].dtype

        def draw(i: int) -> tuple[Tensor, Tensor]:
            x, y = self.task.generate(self.T, self.config.batch_size, self.stream)
            return x.to(device, dtype), y.to(device)

        return Draws(self.config.steps, draw)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> tuple[Tensor, None]:
        x, y = batch
        return self.task.loss(model(x), y), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        loss, accuracy = evaluate_task(model, self.task, *self.test)
        return {"loss": loss} if accuracy is None else {"loss": loss, "accuracy": accuracy}

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.set_state(state["stream"])


def fit_task(model: TaskModel, task: Task, T: int, config: TaskConfig) -> TaskResult:
    """Train `model` in place on `task` with delay T for config.steps Adam steps on the training
    loop, on the model's device.

    Every step draws a fresh batch; the test set is evaluated before training and every
    config.eval_every steps (and after the last).
    """
    start = time.perf_counter()
    param = next(model.parameters())
    x_test, y_test = (t.to(param.device) for t in held_out(task, T, config))
    test = (x_test.to(param.dtype), y_test)
    with eval_mode(model):
        loss0, accuracy = evaluate_task(model, task, *test)
    eval_steps, test_loss, train_loss = [0], [loss0], [None]
    window: list[float] = []

    def on_event(event: str, info: dict[str, Any]) -> None:
        nonlocal accuracy
        if event == "step":
            window.append(info["loss"])
        elif event == "eval":
            eval_steps.append(info["step"])
            test_loss.append(info["valid_loss"])
            train_loss.append(window[-1] if window else None)
            accuracy = info.get("valid_accuracy")

    if config.steps == 0:
        return TaskResult(task=task.name, cell=model.rnn.cell, T=T, baseline=task.baseline(T), eval_steps=eval_steps,
                          test_loss=test_loss, train_loss=train_loss, accuracy=accuracy,
                          solved=task.solved(loss0, accuracy), seconds=time.perf_counter() - start)
    # AdamW without weight decay is Adam, to the bit; log_every = eval_every: one mean per evaluation
    loop = TrainConfig(epochs=1, batch_size=config.batch_size, optimizer="adamw", lr=config.lr, clip=config.clip,
                       schedule="none", eval_every=config.eval_every, log_every=config.eval_every,
                       checkpoint_every=None, device=str(param.device))
    fit(model, SyntheticTask(task, T, config, test), loop, callbacks=[on_event])
    return TaskResult(
        task=task.name, cell=model.rnn.cell, T=T, baseline=task.baseline(T),
        eval_steps=eval_steps, test_loss=test_loss, train_loss=train_loss, accuracy=accuracy,
        solved=task.solved(test_loss[-1], accuracy), seconds=time.perf_counter() - start,
    )


def make_task_model(task: Task, cell: str, config: TaskConfig) -> TaskModel:
    """A fresh model for `task`, its weights drawn from config.seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return TaskModel(cell, task.input_size, config.hidden_size, task.output_size, config.num_layers)


def train_task(task: str | Task, cell: str, T: int, config: TaskConfig, device: str | torch.device = "cpu") -> TaskResult:
    """Build a fresh model for `task` ("adding" or "copy") and `cell`, and train it (see `fit_task`)."""
    task = TASKS[task] if isinstance(task, str) else task
    return fit_task(make_task_model(task, cell, config).to(device), task, T, config)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
