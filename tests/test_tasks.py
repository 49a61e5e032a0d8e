"""Memory tasks: the generators, their baselines measured on generated data, training, and
`rnnkit tasks` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rnnkit.diagnostics import (
    TASKS,
    TaskConfig,
    adding_problem,
    copy_baseline,
    copy_memory,
    evaluate_task,
    held_out,
    make_task_model,
    train_task,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the adding problem


def test_adding_problem_marks_one_number_in_each_half_and_sums_them():
    T, B = 9, 200
    x, y = adding_problem(T, B, _gen())
    assert x.shape == (T, B, 2) and y.shape == (B,)
    values, marks = x[..., 0], x[..., 1]
    assert torch.all((values >= 0) & (values < 1))
    assert torch.all(marks.sum(dim=0) == 2)
    assert torch.all(marks[: T // 2].sum(dim=0) == 1)
    torch.testing.assert_close(y, (values * marks).sum(dim=0))


def test_adding_problem_baseline_of_predicting_one_is_one_sixth():
    _, y = adding_problem(50, 40_000, _gen(1))
    mse = ((y - 1) ** 2).mean().item()
    assert mse == pytest.approx(1 / 6, abs=0.005)  # standard error ~0.001
    assert TASKS["adding"].baseline(50) == pytest.approx(0.1667, abs=1e-4)
    # the task's own loss agrees, scoring only the last step
    out = torch.ones(50, 40_000, 1)
    out[:-1] = 7.0
    assert TASKS["adding"].loss(out, y).item() == pytest.approx(mse, rel=1e-6)


@pytest.mark.parametrize("T, B", [(1, 3), (0, 3), (5, 0)])
def test_adding_problem_rejects_bad_sizes(T, B):
    with pytest.raises(ValueError):
        adding_problem(T, B)


# ---------------------------------------------------------------- the copy-memory task


def test_copy_memory_layout():
    T, B = 6, 50
    x, y = copy_memory(T, B, _gen())
    assert x.shape == (T + 20, B, 10) and y.shape == (T + 20, B)
    assert torch.all(x.sum(dim=-1) == 1)  # one-hot
    ids = x.argmax(dim=-1)
    symbols = ids[:10]
    assert torch.all((symbols >= 1) & (symbols <= 8))
    assert torch.all(ids[10 : T + 9] == 0)  # T - 1 blanks
    assert torch.all(ids[T + 9] == 9)  # the marker
    assert torch.all(ids[T + 10 :] == 0)
    assert torch.all(y[: T + 10] == 0)
    assert torch.all(y[T + 10 :] == symbols)


@pytest.mark.parametrize("T", [10, 100])
def test_copy_memory_memoryless_baseline_measured(T):
    # the best model without memory predicts, at each position, the distribution of the targets there
    B = 20_000
    _, y = copy_memory(T, B, _gen(T))
    counts = torch.nn.functional.one_hot(y, 9).sum(dim=1).double()  # (T + 20, 9)
    p = counts / B
    measured = -(counts * torch.log(torch.where(p > 0, p, 1))).sum() / (B * (T + 20))
    assert measured.item() == pytest.approx(10 * math.log(8) / (T + 20), rel=0.003)
    assert copy_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-12)
    # and the task's loss gives the same number for those logits
    logits = torch.log(torch.where(p > 0, p, 1e-30)).float()[:, None, :].expand(T + 20, 1000, 9)
    assert TASKS["copy"].loss(logits, y[:, :1000]).item() == pytest.approx(copy_baseline(T), rel=0.05)


# ---------------------------------------------------------------- training


def test_train_task_is_reproducible_and_records_the_curve():
    config = TaskConfig(hidden_size=6, steps=7, batch_size=4, test_size=16, eval_every=3, seed=5)
    a = train_task("copy", "gru", 3, config)
    b = train_task("copy", "gru", 3, config)
    assert a.eval_steps == [0, 3, 6, 7]
    assert a.test_loss == b.test_loss and a.train_loss[1:] == b.train_loss[1:]
    assert a.train_loss[0] is None and len(a.train_loss) == 4
    assert a.baseline == copy_baseline(3) and 0 <= a.accuracy <= 1
    assert json.loads(json.dumps(a.to_dict()))["final_loss"] == a.final_loss
    # the global random stream is untouched
    state = torch.random.get_rng_state()
    train_task("adding", "elman", 4, config)
    assert torch.equal(state, torch.random.get_rng_state())


def test_lstm_learns_a_short_adding_problem():
    config = TaskConfig(hidden_size=16, steps=300, batch_size=32, lr=1e-2, test_size=200, eval_every=300)
    result = train_task("adding", "lstm", 6, config)
    assert result.test_loss[0] > result.baseline
    assert result.final_loss < 0.3 * result.baseline


def test_held_out_is_the_same_for_every_cell():
    config = TaskConfig(test_size=8)
    x1, y1 = held_out(TASKS["adding"], 10, config)
    x2, y2 = held_out(TASKS["adding"], 10, config)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    model = make_task_model(TASKS["adding"], "lstm", config)
    loss, accuracy = evaluate_task(model, TASKS["adding"], x1, y1)
    assert accuracy is None and loss > 0


@pytest.mark.parametrize(
    "field, value", [("steps", -1), ("hidden_size", 0), ("eval_every", 0), ("lr", 0.0), ("clip", -1.0)]
)
def test_task_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TaskConfig(**{field: value})


# ---------------------------------------------------------------- rnnkit tasks


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_tasks_command_end_to_end(cli, tmp_path, capsys, task):
    rc = cli(["tasks", task, "--lengths", "3,5", "--hidden", "4", "--train-steps", "4", "--batch", "4",
              "--test-size", "8", "--eval-every", "2", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.split()[:1] in (["elman"], ["lstm"], ["gru"])]
    assert len(lines) == 6
    data = json.loads((tmp_path / f"{task}.json").read_text())
    assert [(r["cell"], r["T"]) for r in data["results"]] == [
        (c, T) for T in (3, 5) for c in ("elman", "lstm", "gru")
    ]
    assert all(r["eval_steps"] == [0, 2, 4] for r in data["results"])
    assert (tmp_path / f"{task}.png").stat().st_size > 0
    table = (tmp_path / f"{task}.csv").read_text().splitlines()
    assert table[0].startswith("cell,T,test loss,memoryless") and len(table) == 7
    assert ("accuracy" in table[0]) == (task == "copy")


@pytest.mark.parametrize(
    "args, message",
    [
        (["adding", "--lengths", "10,x"], "comma-separated integers"),
        (["adding", "--lengths", "1"], "integers >= 2"),
        (["copy", "--lengths", "0"], "integers >= 1"),
        (["copy", "--cells", "lstm,rnn"], "unknown cell 'rnn'"),
        (["copy", "--eval-every", "0"], "--eval-every must be at least 1"),
        (["copy", "--clip", "0"], "--clip must be a finite number > 0, got 0.0"),
    ],
)
def test_tasks_command_bad_input(cli, tmp_path, capsys, args, message):
    rc = cli(["tasks", *args, "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_tasks_command_unknown_task_is_a_usage_error(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["tasks", "sorting"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
