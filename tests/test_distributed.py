"""Training on two processes with torchrun and gloo, on this CPU: the same weights as one process
with the whole batch, elastic restarts, faults and bad settings (rnnkit.training.distributed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnkit import load_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")]

WORKER = Path(__file__).with_name("distributed_worker.py")
# AdamW: SGD at the default rate 20 is chaotic enough that float32 rounding alone parts two runs
SMALL = ["--hidden", "16", "--layers", "1", "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.01", "--quiet"]


def torchrun(*args: str, nproc: int = 2, restarts: int = 0, **popen) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--max-restarts", str(restarts), *args]


def run(command: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def rnnkit_lines(stderr: str) -> list[str]:
    """What rnnkit said, without torchrun's own log lines and report."""
    return [line for line in stderr.splitlines() if line.startswith("rnnkit:")]


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """Sentences of a little grammar: enough steps to kill a process in the middle of a run."""
    import random

    rng = random.Random(0)
    things = "cat dog bird fish cow".split()
    lines = [f"the {rng.choice(things)} {rng.choice(['sat', 'ran', 'slept'])} on the {rng.choice(['mat', 'rug', 'bed'])}"
             for _ in range(9000)]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("dtype, tolerance, setting", [
    ("float64", 1e-10, ["--cell", "lstm"]),
    ("float64", 1e-10, ["--cell", "gru", "--accumulate", "2"]),
    ("float32", 1e-4, ["--cell", "lstm", "--epochs", "1"]),
], ids=["lstm-float64", "gru-accumulate-float64", "lstm-float32"])
def test_two_processes_end_with_the_weights_of_one(tmp_path, dtype, tolerance, setting):
    """Each process reads half of the B streams and DDP averages the gradients: the same steps as
    one process on all B streams. float64: equal to 1e-10; float32: as close as the sums'
    rounding lets them be. AdamW amplifies that rounding about 50-fold an epoch here (measured,
    largest weight difference after 1, 2, 3 epochs: 4e-6, 2e-4, 7e-3; with F.cross_entropy as the
    loss 2e-6, 6e-5, 1e-3), so float32 is compared after one epoch (243 steps)."""
    common = ["--dtype", dtype, "--optimizer", "adamw", *setting]
    one = run([sys.executable, str(WORKER), "--out", "one", *common], tmp_path)
    assert one.returncode == 0, one.stderr
    two = run(torchrun(str(WORKER), "--out", "two", *common), tmp_path)
    assert two.returncode == 0, two.stderr
    assert max_difference(tmp_path / "one/weights.safetensors", tmp_path / "two/weights.safetensors") < tolerance
    a, b = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert len(a["losses"]) == len(b["losses"]) > 100
    assert a["losses"][-1] < a["losses"][0] - 0.1  # it learned
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-5  # the whole batch's loss, reported
    for x, y in zip(a["history"], b["history"], strict=True):  # rank 0 evaluates all of the validation text
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], abs=tolerance)


def test_rnnkit_train_under_torchrun(tmp_path, text):
    """`torchrun ... -m rnnkit train`: rank 0 alone writes the directory, metrics and TensorBoard
    events; results.json records the world size; the evaluations are one process's."""
    flags = ["train", "--data", str(text), *SMALL, "--epochs", "1", "--eval-every", "50"]
    two = run(torchrun("-m", "rnnkit", *flags, "--out", "two", "--tensorboard"), tmp_path)
    assert two.returncode == 0, two.stderr
    one = run([sys.executable, "-m", "rnnkit", *flags, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.stdout.count("test perplexity") == 1  # said once, by rank 0
    results = json.loads((tmp_path / "two/results.json").read_text())
    assert results["world_size"] == 2 and results["stopped"] == "done"
    evals = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("one", "two")]
    assert [r["step"] for r in evals[0]] == [r["step"] for r in evals[1]]  # one line per evaluation
    for x, y in zip(*evals):
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], abs=1e-4)
    assert max_difference(tmp_path / "one/model.safetensors", tmp_path / "two/model.safetensors") < 1e-3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "two/tensorboard"))
    events.Reload()
    valid = events.Scalars("valid/loss")
    assert [e.step for e in valid] == [r["step"] for r in evals[1]]
    assert [e.value for e in valid] == pytest.approx([r["valid_loss"] for r in evals[1]], abs=1e-6)
    assert events.Scalars("train/loss")[-1].value < events.Scalars("train/loss")[0].value


def _worker(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The pid of the worker of `rank` that torchrun (`launcher`) started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"torchrun started no worker of rank {rank}")


def _kill_after_checkpoint(launcher: subprocess.Popen, out: Path, step: int, timeout: float = 120) -> None:
    """SIGKILL rank 1 once the trainer state of `step` or later is saved in `out`."""
    state = out / "trainer_state" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["step"] >= step:
                os.kill(_worker(launcher, 1), signal.SIGKILL)
                return
        except (OSError, ValueError, KeyError):
            pass
        assert launcher.poll() is None, "the run ended before a worker could be killed"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


LONG = ["train", *SMALL, "--epochs", "2", "--dropout", "0.3", "--checkpoint-every", "40", "--eval-every", "200"]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers in /proc")
def test_a_killed_worker_is_restarted_and_the_job_ends_as_if_never_interrupted(tmp_path, text):
    """Under torchrun --max-restarts 1, SIGKILL rank 1 mid-run: the job restarts, both processes
    resume from the last checkpoint (weights, optimizer, every process's dropout stream and share of
    the carried state), and the weights end as an uninterrupted run's, bit for bit."""
    flags = [*LONG, "--data", str(text)]
    whole = run(torchrun("-m", "rnnkit", *flags, "--out", "whole"), tmp_path)
    assert whole.returncode == 0, whole.stderr
    launcher = subprocess.Popen(torchrun("-m", "rnnkit", *flags, "--out", "killed", restarts=1), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_after_checkpoint(launcher, tmp_path / "killed", step=200)
    stdout, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr
    assert "torchrun restarted the job (restart 1)" in stderr
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the evaluations after the checkpoint were made again, once
    for name in ("model.safetensors", "results.json"):
        assert (tmp_path / "killed" / name).exists()
    assert max_difference(tmp_path / "whole/model.safetensors", tmp_path / "killed/model.safetensors") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "killed"))
    assert a["test_loss"] == b["test_loss"] and a["steps"] == b["steps"]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers in /proc")
def test_a_dead_worker_without_restarts_ends_the_job_with_a_message_and_a_loadable_checkpoint(tmp_path, text):
    launcher = subprocess.Popen(torchrun("-m", "rnnkit", *LONG, "--data", str(text), "--out", "m"), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_after_checkpoint(launcher, tmp_path / "m", step=80)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    said = rnnkit_lines(stderr)
    assert len(said) == 1 and said[0].startswith("rnnkit: error: a process of the job stopped"), stderr
    assert "continue with --resume" in said[0] and "Traceback" not in "\n".join(said)
    model, _ = load_model(tmp_path / "m")  # the best model so far
    assert model.config.hidden_size == 16
    resumed = run(torchrun("-m", "rnnkit", *LONG, "--data", str(text), "--out", "m", "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "m/results.json").read_text())["world_size"] == 2


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers in /proc")
def test_sigterm_stops_the_job_where_its_processes_agree_and_saves_it(tmp_path, text):
    """A scheduler's preemption notice (SIGTERM to every process) acts as Ctrl-C: they stop together
    at their next report, save a checkpoint there and say how to go on."""
    launcher = subprocess.Popen(torchrun("-m", "rnnkit", *LONG, "--data", str(text), "--out", "m"), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "m/trainer_state/state.json"
    while not state.exists():
        assert launcher.poll() is None, launcher.communicate()[1]
        time.sleep(0.02)
    for rank in (0, 1):
        os.kill(_worker(launcher, rank), signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    said = rnnkit_lines(stderr)
    assert len(said) == 1 and said[0].startswith("rnnkit: interrupted at step "), stderr
    step = int(said[0].split("step ")[1].split(";")[0])
    assert json.loads(state.read_text())["step"] == step  # saved where they stopped
    assert not (tmp_path / "m/results.json").exists()


def test_a_batch_the_processes_cannot_share_is_refused_before_training(tmp_path, text):
    done = run(torchrun("-m", "rnnkit", "train", "--data", str(text), *SMALL, "--batch-size", "7", "--out", "m"), tmp_path)
    assert done.returncode != 0
    assert rnnkit_lines(done.stderr) == [
        "rnnkit: error: --batch-size must be a multiple of the 2 processes that share its streams, got 7"]
    assert not (tmp_path / "m/model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_started_with_different_settings_are_refused(tmp_path, text):
    """Two "machines" (two torchrun agents meeting at one rendezvous) started with different flags."""
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                          "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test",
                          "-m", "rnnkit", "train", "--data", str(text), *SMALL, "--out", "m", "--hidden", hidden],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for hidden in ("16", "32")
    ]
    said = []
    for agent in agents:
        _, stderr = agent.communicate(timeout=120)
        assert agent.returncode != 0
        said += rnnkit_lines(stderr)
    assert len(said) == 1, said
    assert said[0].startswith("rnnkit: error: the processes of the job were started with different settings: rank 1 "
                              "differs from rank 0 in model, weights")
    assert not (tmp_path / "m/model.safetensors").exists()
