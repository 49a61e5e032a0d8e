"""The training loop on a task that is not a language model: what it learns, gradient
accumulation, callbacks, resuming a task that draws random batches, and non-finite values that
never reach a checkpoint."""

import json
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rnnkit.configs import JSONConfig
from rnnkit.errors import RnnkitError
from rnnkit.training import Task, TrainConfig, fit
from rnnkit.training.loop import Draws


@dataclass(frozen=True)
class ToyConfig(JSONConfig):
    what: ClassVar[str] = "model config"
    size: int = 4


class Regression(nn.Module):
    """y = A x + a, to recover a hidden linear map; float64 so that equal means equal."""

    kind = "toy"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.size, config.size).double()

    def forward(self, x):
        return self.linear(x)


class RegressionTask(Task):
    """Fresh random inputs every step, drawn from a generator the checkpoints keep."""

    def __init__(self, steps: int, batch: int, nan_at: int | None = None) -> None:
        self.steps, self.batch, self.nan_at = steps, batch, nan_at
        self.target = torch.randn(4, 4, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(1)
        self.test = torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def batches(self, device):
        return Draws(self.steps, lambda i: (i, torch.randn(self.batch, 4, generator=self.generator, dtype=torch.float64)))

    def loss(self, model, batch, state):
        i, x = batch
        loss = (model(x) - x @ self.target.T).pow(2).mean()
        return (loss * torch.nan if i == self.nan_at else loss), None

    def evaluate(self, model):
        return {"loss": float((model(self.test) - self.test @ self.target.T).pow(2).mean())}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def _model(seed: int = 0) -> Regression:
    torch.manual_seed(seed)
    return Regression(ToyConfig())


def test_the_loop_trains_a_task_it_knows_nothing_about():
    model = _model()
    events = []
    config = TrainConfig(epochs=3, batch_size=16, optimizer="adamw", lr=0.05, clip=None, schedule="none",
                         checkpoint_every=None, log_every=10, device="cpu")
    summary = fit(model, RegressionTask(steps=40, batch=16), config, callbacks=[lambda e, info: events.append((e, info))])
    assert summary["stopped"] == "done" and summary["steps"] == 120 and summary["epochs_done"] == 3
    assert summary["history"][-1]["valid_loss"] < 0.01 * summary["history"][0]["valid_loss"] + 1e-3
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("eval") == 3 and kinds.count("step") == 12
    assert [info["step"] for e, info in events if e == "step"] == list(range(10, 121, 10))


def test_accumulated_gradients_equal_one_batch_of_their_size():
    """Two half batches accumulated take the same step as the whole batch (equal sizes, mean losses)."""

    class Halves(RegressionTask):
        """The same draws, each cut in two: batch 2j is the first half of draw j, 2j + 1 the second."""

        def batches(self, device):
            def half(i):
                if i % 2 == 0:
                    self.whole = torch.randn(self.batch, 4, generator=self.generator, dtype=torch.float64)
                return i // 2, self.whole[: self.batch // 2] if i % 2 == 0 else self.whole[self.batch // 2 :]

            return Draws(2 * self.steps, half)

    common = dict(epochs=2, optimizer="sgd", lr=0.1, clip=1.0, schedule="none", checkpoint_every=None, device="cpu")
    one, two = _model(), _model()
    fit(one, RegressionTask(steps=15, batch=8), TrainConfig(batch_size=8, **common))
    fit(two, Halves(steps=15, batch=8), TrainConfig(batch_size=4, accumulate=2, **common))
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_crashed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=0.01, schedule="cosine", checkpoint_every=6,
                         eval_every=10, log_every=5, device="cpu")
    straight = _model()
    fit(straight, RegressionTask(steps=25, batch=8), config, tmp_path / "straight")

    def crash(event, info):
        if event == "step" and info["step"] == 35:
            raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError, match="went away"):
        fit(_model(), RegressionTask(steps=25, batch=8), config, tmp_path / "crashed", callbacks=[crash])
    assert json.loads((tmp_path / "crashed" / "trainer_state" / "state.json").read_text())["step"] == 30
    resumed = _model(seed=123)  # its weights come from the checkpoint
    fit(resumed, RegressionTask(steps=25, batch=8), config, tmp_path / "crashed", resume=True)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "crashed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]


def test_a_non_finite_loss_stops_the_run_before_it_reaches_a_checkpoint(tmp_path):
    config = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.01, schedule="none", checkpoint_every=5,
                         log_every=20, eval_every=5, device="cpu")
    with pytest.raises(RnnkitError, match=r"the loss became nan at step 8; stopped, the last good checkpoint"):
        fit(_model(), RegressionTask(steps=30, batch=8, nan_at=7), config, tmp_path / "m")
    state = json.loads((tmp_path / "m" / "trainer_state" / "state.json").read_text())
    assert state["step"] == 5
    for name in ("model.safetensors", *(f"trainer_state/{f}" for f in state["files"])):
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "m" / name).values())


def test_the_last_short_group_of_an_accumulation_is_a_mean_of_its_own():
    """Batches a1, a2, b with accumulate=2 step on mean(a1, a2), then on b alone: as A, b do."""
    x = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    class Fixed(RegressionTask):
        def __init__(self, batches):
            super().__init__(steps=len(batches), batch=8)
            self.fixed = batches

        def batches(self, device):
            return [(i, b) for i, b in enumerate(self.fixed)]

    common = dict(epochs=1, batch_size=8, optimizer="sgd", lr=0.1, clip=None, schedule="none", checkpoint_every=None,
                  device="cpu")
    split, whole = _model(), _model()
    fit(split, Fixed([x[0, :4], x[0, 4:], x[1]]), TrainConfig(accumulate=2, **common))
    fit(whole, Fixed([x[0], x[1]]), TrainConfig(**common))
    for a, b in zip(split.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_task_without_batches_is_an_error_not_a_crash():
    with pytest.raises(RnnkitError, match="no batches"):
        fit(_model(), RegressionTask(steps=0, batch=8), TrainConfig(device="cpu"))


class Worsening(RegressionTask):
    """A validation loss that grows at every evaluation: a plateau schedule decays at each."""

    calls = 0

    def evaluate(self, model):
        Worsening.calls += 1
        return {"loss": float(Worsening.calls)}


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resuming_at_another_rate_scales_the_schedule_where_it_stands(tmp_path, schedule):
    def config(**changes):
        return TrainConfig(**{**dict(epochs=4, batch_size=8, optimizer="sgd", lr=0.1, schedule=schedule, lr_decay=0.5,
                                     checkpoint_every=None, device="cpu"), **changes})

    lrs = []
    fit(_model(), Worsening(steps=5, batch=8), config(epochs=2), tmp_path / "m",
        callbacks=[lambda e, info: lrs.append(info["lr"]) if e == "eval" else None])
    resumed = []
    fit(_model(), Worsening(steps=5, batch=8), config(lr=0.3), tmp_path / "m", resume=True,
        callbacks=[lambda e, info: resumed.append(info["lr"]) if e == "step" else None])
    if schedule == "plateau":  # the second evaluation was worse: 0.1 * 0.5, and now three times that
        assert lrs == pytest.approx([0.1, 0.05]) and resumed[0] == pytest.approx(0.15)
    else:  # the cosine over 20 steps, from the new base, at step 10 (and the next 5)
        assert resumed[0] == pytest.approx(0.3 * (1 + math.cos(math.pi * 15 / 20)) / 2)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["train"]
    assert saved["lr"] == 0.3  # the directory says how the run goes on


def test_a_time_budget_that_ends_first_anneals_the_cosine_by_its_end():
    """1,000 steps would take far longer than the 1.2 s budget: the rate follows the clock down to 0
    instead of staying near lr_0, as the cosine over the steps alone would leave it."""

    class Slow(RegressionTask):
        def loss(self, model, batch, state):
            time.sleep(0.01)
            return super().loss(model, batch, state)

    lrs = []
    config = TrainConfig(epochs=100, batch_size=8, optimizer="sgd", lr=0.1, schedule="cosine", max_minutes=0.02,
                         log_every=1, checkpoint_every=None, device="cpu")
    summary = fit(_model(), Slow(steps=10, batch=8), config,
                  callbacks=[lambda e, info: lrs.append(info["lr"]) if e == "step" else None])
    assert summary["stopped"] == "time_budget" and summary["steps"] < 200
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0, abs=1e-12)
    assert lrs[len(lrs) // 2] < 0.09  # about 0.05 by the clock; the cosine over 1,000 steps would be above 0.099


def test_a_second_thread_is_refused_the_directory_one_holds(tmp_path):
    import threading

    from rnnkit.training.checkpoint import lock_directory

    errors = []
    with lock_directory(tmp_path / "m"), lock_directory(tmp_path / "m"):  # re-entrant in its own thread
        thread = threading.Thread(target=lambda: errors.append(_try_lock(tmp_path / "m")))
        thread.start()
        thread.join()
    assert errors == ["being written by another thread"]


def _try_lock(directory):
    from rnnkit.training.checkpoint import lock_directory

    try:
        with lock_directory(directory):
            return None
    except RnnkitError as e:
        return "being written by another thread" if "another thread" in str(e) else str(e)


def test_tensorboard_events_hold_the_runs_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnkit.training import TensorBoard

    config = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=0.05, schedule="none", eval_every=10,
                         log_every=5, device="cpu")
    summary = fit(_model(), RegressionTask(steps=20, batch=8), config, tmp_path / "m", callbacks=[TensorBoard(tmp_path / "m")])
    events = EventAccumulator(str(tmp_path / "m/tensorboard"))
    events.Reload()
    valid = events.Scalars("valid/loss")
    assert [e.step for e in valid] == [r["step"] for r in summary["history"]] == [10, 20, 30, 40]
    assert [e.value for e in valid] == pytest.approx([r["valid_loss"] for r in summary["history"]], rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, 41, 5))


def test_tensorboard_events_of_a_resumed_run_follow_its_checkpoint(tmp_path):
    """A run that crashed after its checkpoint logged events the resumed run makes again: those go."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnkit.training import TensorBoard

    config = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=0.05, schedule="none", eval_every=10,
                         checkpoint_every=20, log_every=5, device="cpu")
    crashed = TensorBoard(tmp_path / "m")

    def crash(event, info):
        crashed(event, info)
        if event == "eval" and info["step"] == 30:
            raise KeyboardInterrupt  # after the evaluation of step 30, before its checkpoint: 20 is the last

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), RegressionTask(steps=20, batch=8), config, tmp_path / "m", callbacks=[crash])
    crashed.writer.close()
    summary = fit(_model(), RegressionTask(steps=20, batch=8), config, tmp_path / "m", resume=True,
                  callbacks=[TensorBoard(tmp_path / "m")])
    events = EventAccumulator(str(tmp_path / "m/tensorboard"))
    events.Reload()
    valid = events.Scalars("valid/loss")
    assert [e.step for e in valid] == [10, 20, 30, 40]  # 30 once: the resumed run's
    assert valid[2].value == pytest.approx(summary["history"][2]["valid_loss"], rel=1e-6)


def test_tensorboard_without_its_package_says_what_to_install(monkeypatch):
    import sys

    from rnnkit.training import TensorBoard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(RnnkitError, match=r"pip install 'rnnkit\[tensorboard\]'"):
        TensorBoard("anywhere")


def test_a_task_that_cannot_be_sharded_says_so():
    with pytest.raises(RnnkitError, match="RegressionTask cannot train on several processes"):
        RegressionTask(steps=1, batch=1).shard(0, 2)
