"""The training loop, one for every task (minGPT's trainer: the loop knows nothing of the model).

A task (`Task`) gives its batches, the loss of a batch and its evaluation; the loop owns the rest:

    for epoch:                                  task.set_epoch(epoch); state <- task.start_state(model)
        for batch i (from where a resumed run stopped):
            loss, state <- task.loss(model, batch_i, state)      state detached between batches
            backward (/ accumulate)  -> clip -> optimizer step -> schedule
            every log_every steps: one host sync, NaN check, "step" event
            every eval_every steps and every epoch: evaluate, keep the best, "eval" event
            every checkpoint_every steps: save the trainer state
        stop early: no improvement (early_stop), time budget (max_minutes), Ctrl-C

With a model directory, the best model (on the task's validation loss) is written there with its
config and assets, and the whole training state (weights, optimizer, schedule, RNG, the carried
state, the task's own random streams and the position in the data) every `checkpoint_every`
steps and at every evaluation, so that a run killed at any moment resumes from its last
checkpoint and ends, on a CPU, with the same weights as a run never interrupted. Non-finite
losses or weights never reach a checkpoint. Callbacks get the events "start", "step", "eval"
and "end" with a dict of figures; writing metrics.jsonl is one of them.

Seed the global RNG before building the model: the loop draws from it (dropout) but does not
reseed it, so that the weights and the training stream follow from one seed.

Launched by torchrun, `fit` trains on every process of the job with DistributedDataParallel (see
`rnnkit.training.distributed`): the task reads its share of each batch (`Task.shard`), rank 0
evaluates, writes the directory and calls the callbacks, and a checkpoint holds the whole job's
state, so that a restarted job (torchrun --max-restarts) resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..allocator import keep_freed_memory
from ..configs import FieldChecks, JSONConfig
from ..data import detach_state
from ..errors import ParameterError, RnnkitError
from ..io import read_json
from . import checkpoint as ckpt
from . import distributed
from .callbacks import Callback, MetricsFile
from .distributed import Group

OPTIMIZERS = ("sgd", "asgd", "adamw")
SCHEDULES = ("plateau", "cosine", "exponential", "none")
DEFAULT_LR = {"sgd": 20.0, "asgd": 20.0, "adamw": 2e-3}  # for a loss averaged over tokens


@dataclass(frozen=True)
class TrainConfig(JSONConfig):
    """How to train, whatever the task; saved in config.json beside the model config. A task with
    settings of its own extends it (the language model's `LMTrainConfig` adds `bptt`)."""

    what: ClassVar[str] = "training config"

    epochs: int = 10  # passes over the training data
    batch_size: int = 20  # B: examples per batch (parallel streams, for the language model)
    optimizer: str = "sgd"  # "sgd", "asgd" (averaged SGD, Polyak) or "adamw"
    lr: float | None = None  # None: 20 for sgd/asgd, 2e-3 for adamw
    weight_decay: float = 0.0
    clip: float | None = 0.25  # max gradient norm; None: no clipping
    schedule: str = "plateau"  # "plateau": lr *= lr_decay when validation stops improving; "cosine"
    # to 0 at the end of the epochs, or of max_minutes if that comes first (in one process);
    # "exponential": lr *= lr_decay after every epoch from epoch `decay_start` on (Zaremba et al. 2014)
    lr_decay: float = 0.25  # plateau and exponential factor
    decay_start: int = 4  # exponential: epochs at the full rate
    patience: int = 0  # evaluations without improvement before a plateau decay
    early_stop: int | None = None  # stop after this many evaluations without improvement
    eval_every: int | None = None  # also evaluate every N steps (besides every epoch)
    checkpoint_every: int | None = 200  # save the trainer state every N steps
    log_every: int = 20  # steps between progress reports
    eval_batch_size: int = 10
    accumulate: int = 1  # batches whose gradients add up to one optimizer step
    seed: int = 0  # seeds the global RNG before the model is built (rnnkit.train does; fit does not reseed)
    device: str = "auto"  # "auto" (cuda when present), or a torch device: "cpu", "cuda", "cuda:1"
    max_minutes: float | None = None  # stop (and save) after this much training time
    bf16: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on the CPU: fast where the CPU multiplies bf16 (`native_cpu_bf16`)

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.choice("optimizer", OPTIMIZERS)
        check.choice("schedule", SCHEDULES)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ParameterError("device", f"must be auto or a torch device such as cpu or cuda, got {self.device!r}") from None
        for name in ("epochs", "batch_size", "log_every", "eval_batch_size", "decay_start", "accumulate"):
            check.integer(name, minimum=1)
        check.seed()
        check.integer("patience", minimum=0)
        for name in ("eval_every", "checkpoint_every", "early_stop"):
            check.integer(name, minimum=1, optional=True)
        for name in ("lr", "clip", "max_minutes"):
            check.number(name, positive=True, optional=True)
        check.number("weight_decay")
        check.number("lr_decay", positive=True)
        if self.lr_decay > 1:
            raise ParameterError("lr_decay", f"must be in (0, 1], got {self.lr_decay!r}")
        check.boolean("bf16")
        check.boolean("cpu_bf16")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


# Settings that may change on resume: how long to go on, how often to report, and the optimizer's
# rate, clipping and schedule (to go on at a lower rate after a divergence, say); the others (the
# optimizer, the batches, the seed) would make another run.
RESUMABLE_CHANGES = {
    "epochs", "max_minutes", "device", "eval_every", "checkpoint_every", "log_every", "early_stop", "eval_batch_size",
    "bf16", "cpu_bf16", "lr", "clip", "weight_decay", "schedule", "lr_decay", "decay_start", "patience",
}
SCHEDULE_FIELDS = ("schedule", "lr_decay", "decay_start", "patience")  # another value: another schedule


class Task(ABC):
    """What the loop needs of a task. Batches are indexed, so that a resumed epoch starts at the
    batch it stopped before; a task that draws its batches at random keeps its generator in
    `state_dict`, which the loop saves with every checkpoint."""

    @abstractmethod
    def batches(self, device: torch.device) -> Sequence[Any]:
        """One epoch's batches, on `device`; batches[i] is the i-th."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, state: Any) -> tuple[Tensor, Any]:
        """The mean loss of a batch (a scalar tensor) and the state to carry to the next batch
        (None for a task that carries none)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation figures of the model (in eval mode, without gradients); "loss" decides
        which model is the best."""

    def start_state(self, model: nn.Module) -> Any:
        """The state at the start of every epoch (the language model's zero state)."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch's first batch is asked for (and on resuming, with the epoch the
        run stopped in): a task that shuffles its batches every epoch orders them by it."""

    # the dimension of the carried state's tensors that runs over the batch: a job of W processes
    # cuts it into W shards (its checkpoints hold the whole state, gathered)
    carry_batch_dim: ClassVar[int] = 1

    def shard(self, rank: int, world_size: int) -> None:
        """From now on, give only this process's share of every batch: the rank-th of `world_size`
        equal parts, whose mean losses average to the whole batch's (DDP averages the gradients).
        RnnkitError where the batches cannot be cut so."""
        raise RnnkitError(f"{type(self).__name__} cannot train on several processes")

    def count(self, batch: Any) -> int:
        """Tokens (or examples) in a batch, for the throughput the progress shows."""
        return 0

    def on_best(self, model: nn.Module) -> None:
        """Called (in eval mode) on a model that did best so far, before it is saved."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Draws(Sequence):
    """`n` batches, the i-th made by draw(i) when asked for: the batches of a task that draws a
    fresh random one every step (its generator belongs in the task's `state_dict`)."""

    def __init__(self, n: int, draw: Callable[[int], Any]) -> None:
        self.n, self.draw = n, draw

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.draw(i)


class Asset(Protocol):
    """What a model directory keeps beside the weights (a tokenizer), as JSON; resuming compares
    it with the file saved."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass
class LoopState:
    """Where a run stands; saved with every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    batch: int = 0  # the next batch of the current epoch
    best: float = math.inf  # the best validation loss
    bad: int = 0  # evaluations since the best
    elapsed: float = 0.0  # seconds of training
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation's record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        if "window" in data:  # written by rnnkit 0.1's language-model trainer
            data = {**data, "batch": data["window"]}
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def resolve_device(name: str) -> torch.device:
    """The device "auto" (cuda when present) or `name` stands for; ParameterError if it is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as error:
        raise ParameterError("device", f"{name!r} is not available here: {str(error).splitlines()[0]}") from None
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware, accumulating in float32: AMX tiles (Intel Xeon
    from Sapphire Rapids on) or AVX512-BF16's dot products (AMD Zen 4 on, Intel Cooper Lake). There
    bf16 autocast trains an LSTM 1.5-2.5 times as fast as float32 (measured on 2 cores of a Xeon with
    AMX and of an EPYC with AVX512-BF16); elsewhere bf16 is emulated, and slower."""
    # PyTorch's own checks; private, so looked up
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if config.optimizer == "asgd":
        # averaging from the first step, as AWD-LSTM's ASGD phase (Merity et al. 2017, section 3)
        return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0.0, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def schedule_factor(config: TrainConfig, total_steps: int, step: int, epoch: int, elapsed: float = 0.0) -> float:
    """lr / the base rate after `step` steps, `epoch` epochs and `elapsed` seconds, as
    `make_schedule`'s schedules set it (plateau and none: 1, as when they start). The cosine runs to
    whichever ends first, the steps or max_minutes: (1 + cos(pi p)) / 2 at progress
    p = max(step / steps, elapsed / budget)."""
    if config.schedule == "cosine":
        progress = step / total_steps
        if config.max_minutes is not None:
            progress = min(1.0, max(progress, elapsed / (60 * config.max_minutes)))
        return (1 + math.cos(math.pi * progress)) / 2
    if config.schedule == "exponential":
        return config.lr_decay ** max(0, epoch + 1 - config.decay_start)
    return 1.0


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "exponential":
        # during epoch i: lr_0 * lr_decay ** max(0, i + 1 - decay_start); stepped at each epoch's end
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: config.lr_decay ** max(0, i + 1 - config.decay_start)
        )
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_decay, patience=config.patience)
    return None


@contextlib.contextmanager
def averaged_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """With ASGD, evaluate (and keep as best) the averaged weights, then put the live ones back."""
    if not isinstance(optimizer, torch.optim.ASGD):
        yield
        return
    live = {p: p.detach().clone() for p in model.parameters() if "ax" in optimizer.state.get(p, {})}
    with torch.no_grad():
        for p in live:
            p.copy_(optimizer.state[p]["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in live.items():
                p.copy_(value)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode and without gradients for the block, then back as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _stop_on_signals(*signals: signal.Signals) -> Iterator[threading.Event]:
    """Turn Ctrl-C (and, in a job, the SIGTERM that a launcher or a scheduler sends) into a flag
    the loop checks between steps, so a step is never cut in half."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def check_resume(directory: Path, model: nn.Module, config: TrainConfig, assets: Mapping[str, Asset]) -> TrainConfig:
    """RnnkitError unless the run saved in `directory` is this one: the same model config and
    assets, and the same training settings but for RESUMABLE_CHANGES. Returns the saved settings."""
    saved = ckpt.read_config(directory)
    if saved["kind"] != model.kind:
        raise RnnkitError(f"{directory} holds a {saved['kind']!r} model, not {model.kind!r}")
    # through the config classes, so that fields added since the run was saved take their defaults
    try:
        saved_model = type(model.config).from_dict(saved["model"]).to_dict()
        saved_train = type(config).from_dict(saved.get("train", {})).to_dict()
    except (TypeError, ValueError) as e:
        raise RnnkitError(f"{directory / ckpt.CONFIG}: {e}") from None
    now = model.config.to_dict()
    if saved_model != now:
        changed = sorted(k for k in saved_model if saved_model[k] != now[k])
        raise RnnkitError(f"resume with another model config (changed: {', '.join(changed)}) in {directory}")
    for name, asset in assets.items():
        if read_json(directory / name, f"the saved {name}") != asset.to_json():
            raise RnnkitError(f"resume with another {Path(name).stem} than the one saved in {directory}")
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and saved_train[k] != v)
    if changed:
        raise RnnkitError(f"resume with other training settings ({', '.join(changed)}) than the run in {directory}")
    return type(config).from_dict(saved.get("train", {}))


def fit(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    directory: str | Path | None = None,
    *,
    assets: Mapping[str, Asset] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train `model` on `task`; return a summary.

    With `directory`, the model directory the run writes: the best model with its config and
    `assets` (file name -> Asset, e.g. {"tokenizer.json": tokenizer}), metrics.jsonl, and the
    trainer state that `resume=True` continues from. The model needs `kind` and `config` (a
    JSONConfig) to be saved. Without one, nothing is written and the model ends with its last
    weights.

    In a job that torchrun launched, every process calls `fit` with the same arguments (a
    directory on a file system they share); rank 0 alone writes the directory and calls the
    callbacks. A script ends the job with `rnnkit.training.distributed.leave(group)` on every
    process (the group: `distributed.current()`), so that none exits while another still uses it.

    The summary holds "steps", "epochs_done", "best_valid" (loss), "stopped" ("done",
    "early_stop", "time_budget" or "interrupted"), "history" (every evaluation), "device" and
    "world_size" (the processes that trained).
    """
    assets = dict(assets or {})
    group, device = distributed.setup(resolve_device(config.device))
    if group is not None:
        with distributed.together(group):
            task.shard(group.rank, group.world_size)
        distributed.check_same(group, {
            "model": model.config.to_dict() if hasattr(model, "config") else None, "train": config.to_dict(),
            "weights": {k: tuple(v.shape) for k, v in model.state_dict().items()}, "resume": resume,
            "directory": directory is not None,
        })
        if not group.main:
            callbacks = ()
    directory = None if directory is None else Path(directory)
    writes = directory is not None and distributed.leads(group)
    saved_config = None
    with contextlib.ExitStack() as held:
        with distributed.together(group):
            if writes:
                held.enter_context(ckpt.lock_directory(directory))  # one writer: a second run is refused here
                if resume:
                    saved_config = check_resume(directory, model, config, assets)
                    ckpt.remove_orphans(directory)
                    ckpt.write_config(directory, model, config)  # the run's settings from now on
                elif (directory / ckpt.CONFIG).exists():
                    raise RnnkitError(f"{directory} already holds a model: resume it, or write to another directory")
                callbacks = [MetricsFile(directory), *callbacks]
            run = _Run(model, task, config, device, directory, assets, callbacks, group)
        restoring = writes and resume and ckpt.has_trainer_state(directory)
        restoring, saved_config = distributed.broadcast(group, (restoring, saved_config))
        with distributed.together(group):
            if restoring:
                run.restore(saved_config)
        if restoring and writes:
            callbacks[0].truncate(run.st.step)  # evaluations after the checkpoint are made again
        elif writes and not resume:
            ckpt.save_model(directory, model, assets, config)
        return run.train()


class _TaskLoss(nn.Module):
    """The task's loss as a module's forward, where DistributedDataParallel hooks in."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: Any, state: Any) -> tuple[Tensor, Any]:
        return self.task.loss(self.model, batch, state)


class _Run:
    """One call of `fit`: what its pieces share."""

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, device: torch.device,
                 directory: Path | None, assets: dict[str, Asset], callbacks: Sequence[Callback],
                 group: Group | None = None) -> None:
        self.model, self.task, self.config, self.device = model.to(device), task, config, device
        self.directory, self.assets, self.callbacks = directory, assets, callbacks
        self.group, self.world_size = group, 1 if group is None else group.world_size
        self.writes = directory is not None and distributed.leads(group)  # only rank 0 writes
        self.ddp: nn.Module | None = None  # DistributedDataParallel, made when training starts
        if group is not None:
            _own_stream(group)
        self.batches = task.batches(device)
        self.per_epoch = len(self.batches)
        if self.per_epoch == 0:
            raise RnnkitError("the task has no batches: there is nothing to train on")
        self.total_steps = config.epochs * -(-self.per_epoch // config.accumulate)
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_schedule(self.optimizer, config, self.total_steps)
        self.st = LoopState()
        self.saved_step = 0  # the step of the last trainer state saved
        self.carry: Any = None  # the state the task carries from batch to batch
        # the last log_every losses, kept on the device: no host sync per step, and one buffer rather
        # than a list of small tensors, which fragmented the CPU heap (peak memory 1.5x the plain loop's)
        self.losses = torch.empty(min(config.log_every * config.accumulate, self.per_epoch), device=device)
        self.logged = 0  # losses in the buffer
        self.tokens, self.clock = 0, time.perf_counter()  # since the last report

    def restore(self, saved_config: TrainConfig) -> None:
        """Continue from the trainer state saved in the directory; `saved_config` is config.json's,
        for a state saved before the state kept its own."""
        try:
            self._restore(saved_config)
        except RnnkitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise RnnkitError(f"the trainer state in {self.directory / ckpt.STATE_DIR} is damaged "
                              f"({type(e).__name__}: {e}); it cannot be resumed") from None

    def _restore(self, saved_config: TrainConfig) -> None:
        saved = ckpt.load_trainer_state(self.directory, self.model)
        self.st = LoopState.from_dict(saved.get("loop", saved.get("trainer", {})))
        self.saved_step = self.st.step
        config = self.config
        # the settings the optimizer's state was made with
        before = type(config).from_dict(saved["config"]) if "config" in saved else saved_config
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
        same_schedule = all(getattr(before, f) == getattr(config, f) for f in SCHEDULE_FIELDS)
        if same_schedule and self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if same_schedule:
            # another rate scales the schedule where it stands (a plateau's decays so far are kept)
            self._set_lr(lambda lr: lr * config.learning_rate / before.learning_rate, config.learning_rate)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and (
                    self.scheduler.T_max != self.total_steps):  # other epochs: the longer cosine, where the run is
                self.scheduler.T_max = self.total_steps
                factor = schedule_factor(config, self.total_steps, self.st.step, self.st.epoch)
                self._set_lr(lambda lr: config.learning_rate * factor, config.learning_rate)
        else:  # another schedule: it takes over from the base rate, where the run stands
            factor = schedule_factor(config, self.total_steps, self.st.step, self.st.epoch)
            self._set_lr(lambda lr: config.learning_rate * factor, config.learning_rate)
            if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.last_epoch = self.st.step if config.schedule == "cosine" else self.st.epoch
        by_rank = saved.get("rng_by_rank") if self.group is not None else None  # a job's: every process's
        if by_rank is None or not distributed.set_rng(self.group, by_rank):
            torch.set_rng_state(saved["rng"])
            if self.device.type == "cuda" and "cuda_rng" in saved:
                torch.cuda.set_rng_state(saved["cuda_rng"])
            if self.group is not None:  # saved alone or by a job of another size: fresh streams from there
                _own_stream(self.group)
        self.task.load_state_dict(saved.get("task", {}))
        carry = saved.get("carry", saved.get("hidden"))  # "hidden": rnnkit 0.1
        if carry is not None:
            carry = tuple(c.to(self.device) for c in carry) if isinstance(carry, tuple) else carry.to(self.device)
        self.carry = distributed.shard(self.group, carry, self.task.carry_batch_dim)  # saved whole

    def _set_lr(self, rate: Callable[[float], float], base: float) -> None:
        """Every group's rate to rate(its rate), the schedule's base rate to `base` (ASGD's step
        size too, which it reads before recomputing it)."""
        for group in self.optimizer.param_groups:
            group["lr"], group["initial_lr"] = rate(group["lr"]), base
            for p in group["params"]:
                if "eta" in self.optimizer.state.get(p, {}):
                    self.optimizer.state[p]["eta"].fill_(group["lr"])
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [base] * len(self.optimizer.param_groups)

    def report(self, event: str, info: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(event, info)

    def save_state(self) -> None:
        """The trainer state, which resuming continues from; never with non-finite weights. A
        job's holds the whole carried state and every process's random streams."""
        if not _finite(self.model):
            raise distributed.shared_error(self.group, f"the weights became non-finite by step {self.st.step}; "
                                           f"stopped without saving them, the last good checkpoint is kept "
                                           f"(try a lower lr or clip)")
        if self.directory is None:
            return
        carry = distributed.gather(self.group, self.carry, self.task.carry_batch_dim)
        by_rank = distributed.gather_rng(self.group) if self.group is not None else {}
        if not self.writes:
            return
        saved = {
            "loop": dataclasses.asdict(self.st), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": torch.get_rng_state(), "carry": carry, "task": self.task.state_dict(),
            "config": self.config.to_dict(),
        }
        if self.device.type == "cuda":
            saved["cuda_rng"] = torch.cuda.get_rng_state()
        if by_rank:
            saved["rng_by_rank"] = by_rank
        ckpt.save_trainer_state(self.directory, self.model, self.st.step, saved)
        self.saved_step = self.st.step

    def evaluate(self) -> bool:
        """Evaluate, keep the best model, step the plateau schedule; True to stop early."""
        st, model = self.st, self.model
        main = distributed.leads(self.group)
        with averaged_weights(model, self.optimizer), eval_mode(model):
            metrics = distributed.broadcast(self.group, self.task.evaluate(model) if main else None)  # rank 0's
            improved = math.isfinite(metrics["loss"]) and metrics["loss"] < st.best and _finite(model)
            if improved:
                st.best, st.bad = metrics["loss"], 0
                if main:
                    self.task.on_best(model)
                if self.writes:
                    ckpt.save_model(self.directory, model, self.assets, self.config)
            else:
                st.bad += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics["loss"])
        record = {
            "step": st.step, "epoch": st.epoch + st.batch / self.per_epoch,
            **{f"valid_{k}": v for k, v in metrics.items()},
            "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": st.elapsed, "best": improved,
        }
        st.history.append(record)
        self.report("eval", record)
        return self.config.early_stop is not None and st.bad >= self.config.early_stop

    def evaluated_now(self) -> bool:
        return bool(self.st.history) and self.st.history[-1]["step"] == self.st.step

    def check_losses(self, final: bool) -> None:
        """One host sync: stop at a non-finite loss; every log_every steps (or `final`), report."""
        if not self.logged:
            return
        values = distributed.mean(self.group, self.losses[: self.logged]).cpu()  # the whole batch's losses
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            step = self.st.step - (self.logged - int(bad[0]) - 1) // self.config.accumulate
            where = f" in {self.directory}" if self.directory else ""
            raise distributed.shared_error(self.group, f"the loss became {values[int(bad[0])].item()} at step {step}; "
                                           f"stopped, the last good checkpoint{where} is kept (try a lower lr or clip)")
        if self.logged == len(self.losses) or final:
            now = time.perf_counter()
            self.report("step", {
                "step": self.st.step, "epoch": self.st.epoch, "loss": values.mean().item(),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": self.tokens / max(now - self.clock, 1e-9),
            })
            self.logged, self.tokens, self.clock = 0, 0, now

    def step(self, i: int, autocast: Any) -> bool:
        """Batch i of the epoch: forward, backward, and (once `accumulate` batches are in) an
        optimizer step; True when a step was taken."""
        config, st = self.config, self.st
        batch = self.batches[i]
        self.carry = detach_state(self.carry)
        last = not (i + 1) % config.accumulate or i + 1 == self.per_epoch  # of the batches one step adds up
        # in a job, the gradients are averaged over the processes once per step, with its last batch
        with contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync():
            with autocast:
                loss, self.carry = (self.task.loss(self.model, batch, self.carry) if self.ddp is None
                                    else self.ddp(batch, self.carry))
            group = min(config.accumulate, self.per_epoch - i + i % config.accumulate)  # the epoch's last may be short
            (loss / group if group > 1 else loss).backward()
        self.losses[self.logged].copy_(loss.detach())
        self.logged += 1
        self.tokens += self.task.count(batch) * self.world_size
        st.batch = i + 1
        if not last:
            return False  # gradients add up until the next step
        if config.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if config.schedule == "cosine":
            self.scheduler.step()
        st.step += 1
        return True

    def _anneal_by_time(self) -> None:
        """With a time budget the cosine runs to whichever ends first, the epochs or the budget,
        so that a run the budget cuts has still annealed (`schedule_factor`). Not in a job, whose
        processes' clocks differ while their rates must not: there the epochs alone set it."""
        st = self.st
        factor = schedule_factor(self.config, self.total_steps, st.step, st.epoch, st.elapsed)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor

    def train(self) -> dict[str, Any]:
        if self.group is None:
            return self._train()
        from torch.nn.parallel import DistributedDataParallel

        # made here, after any restore: it starts by copying rank 0's weights to every process
        # no buffer takes part in training (the LM's start state is for prompts): none is sent every step
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else {"broadcast_buffers": False})  # its older name
        self.ddp = DistributedDataParallel(
            _TaskLoss(self.model, self.task), device_ids=[self.device.index] if self.device.type == "cuda" else None, **quiet)
        try:
            return self._train()
        except RuntimeError as error:
            if not distributed.lost_peer(error):
                raise
            said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            kept = (f"; the checkpoint of step {self.saved_step} in {self.directory} is kept: continue with --resume, "
                    f"or let torchrun restart the job (--max-restarts)" if self.directory is not None else "")
            raise distributed.shared_error(self.group, f"a process of the job stopped ({said[:200]}){kept}") from None

    def _train(self) -> dict[str, Any]:
        config, st = self.config, self.st
        if self.device.type == "cpu":
            keep_freed_memory()  # every step allocates the same large tensors again
        # matrix products in bf16, weights, optimizer and evaluation in float32
        precision = {"cuda": config.bf16, "cpu": config.cpu_bf16}
        autocast = torch.autocast(self.device.type if self.device.type in precision else "cpu", dtype=torch.bfloat16,
                                  enabled=precision.get(self.device.type, False))
        self.report("start", {"steps": self.total_steps, "step": st.step, "batches": self.per_epoch,
                              "device": str(self.device), "world_size": self.world_size})
        self.model.train()
        stopped, started = "done", time.perf_counter() - st.elapsed
        signals = (signal.SIGINT,) if self.group is None else (signal.SIGINT, signal.SIGTERM)
        with _stop_on_signals(*signals) as interrupted:
            while st.epoch < config.epochs and stopped == "done":
                self.task.set_epoch(st.epoch)
                if self.carry is None:
                    self.carry = self.task.start_state(self.model)
                self.optimizer.zero_grad(set_to_none=True)
                for i in range(st.batch, self.per_epoch):
                    if not self.step(i, autocast):
                        continue
                    st.elapsed = time.perf_counter() - started
                    if config.schedule == "cosine" and config.max_minutes is not None and self.group is None:
                        self._anneal_by_time()
                    reporting = self.logged == len(self.losses) or st.batch == self.per_epoch
                    if reporting:
                        self.check_losses(final=st.batch == self.per_epoch)
                    out_of_time = config.max_minutes is not None and st.elapsed >= 60 * config.max_minutes
                    asked = interrupted.is_set()
                    if self.group is not None:  # the processes stop together, where they report
                        out_of_time, asked = distributed.any_set(self.group, out_of_time, asked) if reporting else (False, False)
                    evaluated = bool(config.eval_every) and st.step % config.eval_every == 0
                    if evaluated and self.evaluate():
                        stopped = "early_stop"
                    if stopped != "done" or out_of_time or asked:
                        stopped = "time_budget" if out_of_time else "interrupted" if asked else stopped
                        break
                    if evaluated or (config.checkpoint_every and st.step % config.checkpoint_every == 0):
                        self.check_losses(final=False)
                        self.save_state()
                else:
                    st.epoch, st.batch, self.carry = st.epoch + 1, 0, None
                    if config.schedule == "exponential":
                        self.scheduler.step()
                    if not self.evaluated_now() and self.evaluate():
                        stopped = "early_stop"
                self.check_losses(final=True)
                self.save_state()
        if stopped == "time_budget" and not self.evaluated_now():
            self.evaluate()
            self.save_state()
        self.report("end", {"stopped": stopped, "step": st.step})
        return {
            "steps": st.step, "epochs_done": st.epoch, "best_valid": st.best,
            "stopped": stopped, "history": st.history, "device": str(self.device), "world_size": self.world_size,
        }


def _own_stream(group: Group) -> None:
    """A random stream for each process (dropout masks), drawn from the one they share."""
    torch.manual_seed(int(torch.randint(2**62, ())) + group.rank)
