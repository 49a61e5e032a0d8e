"""Training a language model with truncated backpropagation through time.

The loop knows the model only through `model.loss(x, y, state) -> (loss, state)` and
`model.init_state(B)`; reporting goes through a callback, checkpoints through `checkpoint.py`.
Every `checkpoint_every` steps, and at every evaluation, the full training state is saved, so a
run killed at any moment resumes from the last checkpoint and ends with the same weights as a run
never interrupted (on a CPU; GPU kernels are not bitwise deterministic).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from . import checkpoint as ckpt
from ..configs import JSONConfig
from ..errors import RnnkitError
from ..io import append_jsonl
from ..apps.lm.generate import line_end_id
from ..apps.lm.model import LMConfig, RNNLanguageModel
from ..data import BPTTBatches, Corpus, detach_state

OPTIMIZERS = ("sgd", "asgd", "adamw")
SCHEDULES = ("plateau", "cosine", "exponential", "none")
DEFAULT_LR = {"sgd": 20.0, "asgd": 20.0, "adamw": 2e-3}  # for a loss averaged over tokens


@dataclass(frozen=True)
class TrainConfig(JSONConfig):
    """How to train; saved in config.json beside the model config."""

    what: ClassVar[str] = "training config"

    epochs: int = 10  # passes over the training split
    batch_size: int = 20  # B, parallel streams
    bptt: int = 35  # T, steps per window of truncated backpropagation
    optimizer: str = "sgd"  # "sgd", "asgd" (averaged SGD, Polyak) or "adamw"
    lr: float | None = None  # None: 20 for sgd/asgd, 2e-3 for adamw
    weight_decay: float = 0.0
    clip: float | None = 0.25  # max gradient norm; None: no clipping
    schedule: str = "plateau"  # "plateau": lr *= lr_decay when validation stops improving; "cosine";
    # "exponential": lr *= lr_decay after every epoch from epoch `decay_start` on (Zaremba et al. 2014)
    lr_decay: float = 0.25  # plateau and exponential factor
    decay_start: int = 4  # exponential: epochs at the full rate
    patience: int = 0  # evaluations without improvement before a plateau decay
    early_stop: int | None = None  # stop after this many evaluations without improvement
    eval_every: int | None = None  # also evaluate every N steps (besides every epoch)
    checkpoint_every: int | None = 200  # save the trainer state every N steps
    log_every: int = 20  # steps between progress reports
    eval_batch_size: int = 10
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    max_minutes: float | None = None  # stop (and save) after this much training time
    bf16: bool = True  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be positive, got {self.max_minutes}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
        ]
        for name in ("batch_size", "bptt", "log_every", "eval_batch_size", "decay_start"):
            checks.append((getattr(self, name) >= 1, f"{name} must be a positive integer, got {getattr(self, name)}"))
        for name in ("eval_every", "checkpoint_every", "early_stop"):
            value = getattr(self, name)
            checks.append((value is None or value >= 1, f"{name} must be a positive integer, got {value}"))
        for ok, message in checks:
            if not ok:
                raise RnnkitError(message)

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr



# Settings that may change on --resume; any other change would not continue the same run.
RESUMABLE_CHANGES = {"epochs", "max_minutes", "device", "eval_every", "checkpoint_every", "log_every", "early_stop"}

Callback = Callable[[str, dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RnnkitError("--device cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


@torch.no_grad()
def evaluate(model: RNNLanguageModel, ids: Any, batch_size: int = 10, bptt: int = 35, device: Any = None) -> dict[str, float]:
    """Mean cross-entropy over `ids` (state carried through), as loss (nats per token), perplexity and tokens."""
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    loss = total.item() / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


def _make_optimizer(model: RNNLanguageModel, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if config.optimizer == "asgd":
        # averaging from the first step, as AWD-LSTM's ASGD phase (Merity et al. 2017, section 3)
        return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0.0, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


@contextlib.contextmanager
def _averaged_weights(model: RNNLanguageModel, optimizer: torch.optim.Optimizer) -> Iterator[None]:
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
def _stop_on_sigint() -> Iterator[threading.Event]:
    """Turn Ctrl-C into a flag the loop checks between steps, so a step is never cut in half."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_resume(directory: Path, model_config: LMConfig, config: TrainConfig, corpus: Corpus) -> None:
    saved = ckpt.read_config(directory)
    # through the config classes, so that fields added since the run was saved take their defaults
    try:
        saved_model = LMConfig.from_dict(saved["model"]).to_dict()
        saved_train = TrainConfig.from_dict(saved.get("train", {})).to_dict()
    except (TypeError, ValueError) as e:
        raise RnnkitError(f"{directory / ckpt.CONFIG}: {e}") from None
    if saved_model != model_config.to_dict():
        changed = sorted(k for k in saved_model if saved_model[k] != model_config.to_dict()[k])
        raise RnnkitError(f"--resume with another model config (changed: {', '.join(changed)}) in {directory}")
    old = ckpt.load_tokenizer(directory / ckpt.TOKENIZER)
    if old.fingerprint() != corpus.tokenizer.fingerprint():
        raise RnnkitError(f"--resume with another tokenizer than the one saved in {directory}")
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and saved_train[k] != v)
    if changed:
        raise RnnkitError(f"--resume with other training settings ({', '.join(changed)}) than the run in {directory}")


def train(
    directory: str | Path,
    corpus: Corpus,
    model_config: LMConfig,
    config: TrainConfig,
    resume: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train a language model on `corpus` into the model directory; return a summary.

    The summary holds "steps", "epochs_done", "best_valid" (loss), "stopped" ("done",
    "early_stop", "time_budget" or "interrupted") and "history" (every evaluation).
    """
    directory = Path(directory)
    report = callback or (lambda event, info: None)
    device = resolve_device(config.device)
    if resume:
        _check_resume(directory, model_config, config, corpus)
    elif (directory / ckpt.CONFIG).exists():
        raise RnnkitError(f"{directory} already holds a model: use --resume to continue it, or another --out")
    torch.manual_seed(config.seed)
    model = RNNLanguageModel(model_config)
    batches = BPTTBatches(corpus.train, config.batch_size, config.bptt, device, name="training split")
    optimizer = _make_optimizer(model.to(device), config)
    total_steps = config.epochs * len(batches)
    if config.schedule == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    elif config.schedule == "exponential":
        # during epoch i: lr_0 * lr_decay ** max(0, i + 1 - decay_start); stepped at each epoch's end
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: config.lr_decay ** max(0, i + 1 - config.decay_start)
        )
    elif config.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_decay, patience=config.patience)
    else:
        scheduler = None
    train_dict = config.to_dict()
    st: dict[str, Any] = {"step": 0, "epoch": 0, "window": 0, "best": math.inf, "bad": 0, "elapsed": 0.0, "history": []}
    hidden: Any = None
    if resume and (directory / ckpt.STATE_DIR / "state.json").exists():
        saved = ckpt.load_trainer_state(directory, model)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"])
        hidden = saved["hidden"]
        if hidden is not None:
            hidden = tuple(h.to(device) for h in hidden) if isinstance(hidden, tuple) else hidden.to(device)
        st = saved["trainer"]
    elif not resume:
        ckpt.save_model(directory, model, corpus.tokenizer, train_dict)

    def save_state() -> None:
        saved = {
            "trainer": st, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": torch.get_rng_state(), "hidden": hidden,
        }
        if device.type == "cuda":
            saved["cuda_rng"] = torch.cuda.get_rng_state()
        ckpt.save_trainer_state(directory, model, st["step"], saved)

    def run_eval() -> bool:
        """Evaluate on validation, keep the best model, step the plateau schedule; True to stop early."""
        with _averaged_weights(model, optimizer):
            metrics = evaluate(model, corpus.valid, config.eval_batch_size, config.bptt, device)
            improved = metrics["loss"] < st["best"]
            if improved:
                st["best"], st["bad"] = metrics["loss"], 0
                model.calibrate_start_state(corpus.valid, line_end_id(corpus.tokenizer))
                ckpt.save_model(directory, model, corpus.tokenizer, train_dict)
            else:
                st["bad"] += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics["loss"])
        record = {
            "step": st["step"], "epoch": st["epoch"] + st["window"] / len(batches),
            "valid_loss": metrics["loss"], "valid_perplexity": metrics["perplexity"],
            "lr": optimizer.param_groups[0]["lr"], "elapsed_s": st["elapsed"], "best": improved,
        }
        st["history"].append(record)
        append_jsonl(directory / ckpt.METRICS, record)
        report("eval", record)
        return config.early_stop is not None and st["bad"] >= config.early_stop

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    report("start", {"steps": total_steps, "step": st["step"], "windows": len(batches), "device": str(device)})
    model.train()
    stopped, started = "done", time.perf_counter() - st["elapsed"]
    # the last log_every losses, kept on the device: no host sync per step, and one buffer rather
    # than a list of small tensors, which fragmented the CPU heap (peak memory 1.5x the plain loop's)
    losses = torch.empty(config.log_every, device=device)
    logged = 0
    tokens_since, clock = 0, time.perf_counter()
    with _stop_on_sigint() as interrupted:
        while st["epoch"] < config.epochs and stopped == "done":
            if hidden is None:
                hidden = model.init_state(config.batch_size)
            for i in range(st["window"], len(batches)):
                x, y = batches.window(i)
                hidden = detach_state(hidden)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss, hidden = model.loss(x, y, hidden)
                loss.backward()
                if config.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                losses[logged].copy_(loss.detach())
                logged += 1
                if logged == config.log_every or i == len(batches) - 1:
                    # one host sync per report, not per step; a non-finite loss is found here
                    values = losses[:logged].cpu()
                    bad = (~torch.isfinite(values)).nonzero()
                    if len(bad):
                        step = st["step"] + int(bad[0]) + 2 - logged
                        raise RnnkitError(
                            f"the loss became {values[int(bad[0])].item()} at step {step}; stopped, "
                            f"the last good checkpoint in {directory} is kept (try a lower --lr or --clip)"
                        )
                    now = time.perf_counter()
                    tokens_since += y.numel()
                    report("step", {
                        "step": st["step"] + 1, "epoch": st["epoch"], "loss": values.mean().item(),
                        "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_since / max(now - clock, 1e-9),
                    })
                    logged, tokens_since, clock = 0, 0, now
                else:
                    tokens_since += y.numel()
                optimizer.step()
                if config.schedule == "cosine":
                    scheduler.step()
                st["step"] += 1
                st["window"] = i + 1
                st["elapsed"] = time.perf_counter() - started
                out_of_time = config.max_minutes is not None and st["elapsed"] >= 60 * config.max_minutes
                if config.eval_every and st["step"] % config.eval_every == 0 and run_eval():
                    stopped = "early_stop"
                if stopped != "done" or out_of_time or interrupted.is_set():
                    stopped = "time_budget" if out_of_time else "interrupted" if interrupted.is_set() else stopped
                    break
                if config.checkpoint_every and st["step"] % config.checkpoint_every == 0:
                    save_state()
            else:
                st["epoch"], st["window"], hidden = st["epoch"] + 1, 0, None
                if config.schedule == "exponential":
                    scheduler.step()
                if run_eval():
                    stopped = "early_stop"
            save_state()
    if stopped == "time_budget" and not (st["history"] and st["history"][-1]["step"] == st["step"]):
        run_eval()
        save_state()
    report("end", {"stopped": stopped, "step": st["step"]})
    return {
        "steps": st["step"], "epochs_done": st["epoch"], "best_valid": st["best"],
        "stopped": stopped, "history": st["history"], "device": str(device),
    }
