"""What rnnkit guarantees under bad input and faults: one writer per model directory, no
non-finite value in a checkpoint, loading bounded by the file, and a one-line error (never a
traceback) for every bad input, with what was saved left as it was."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rnnkit import load_model, predict_next
from rnnkit.cli import main
from rnnkit.data import build_corpus
from rnnkit.errors import RnnkitError
from rnnkit.training import fit
from rnnkit.training.checkpoint import STATE_DIR

from helpers import animal_corpus
from test_loop import RegressionTask, TrainConfig, _model

SMALL = ["--hidden", "16", "--layers", "1", "--batch-size", "8", "--bptt", "10", "--quiet"]
RNNKIT = [sys.executable, "-m", "rnnkit"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small trained model directory, with the answer it gives, to check that nothing damages it."""
    root = tmp_path_factory.mktemp("reliability")
    text = animal_corpus(root / "animals.txt", 600)
    assert main(["train", "--data", str(text), "--out", str(root / "m"), "--epochs", "1", "--optimizer", "adamw",
                 "--lr", "0.01", "--checkpoint-every", "10", *SMALL]) == 0
    return root / "m"


def _answer(directory: Path) -> list[tuple[str, float]]:
    model, tokenizer = load_model(directory)
    return [(p.token, p.prob) for p in predict_next(model, tokenizer, "the cow in the barn says", top_k=3)[0]]


def _crafted(tmp_path: Path, model_dir: Path, name: str, **model_fields) -> Path:
    """A copy of the model directory whose config.json says other things about the model."""
    directory = tmp_path / name
    shutil.copytree(model_dir, directory, ignore=shutil.ignore_patterns("data", STATE_DIR, ".lock"))
    config = json.loads((directory / "config.json").read_text())
    config["model"].update(model_fields)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _bad_inputs(tmp_path: Path, model_dir: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one error line must say): every command with its bad inputs."""
    text = model_dir.parent / "animals.txt"
    m, out = str(model_dir), str(tmp_path / "new")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    theirs = tmp_path / "my-files"
    theirs.mkdir()
    (theirs / "results.json").write_text("{}")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x00\x01\x02" * 50)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one = tmp_path / "one.txt"
    one.write_text("\n")  # a line end alone: one <eos>
    nan = _crafted(tmp_path, model_dir, "nan")
    weights = load_file(nan / "model.safetensors")
    weights[next(iter(weights))][0] = float("nan")
    save_file(weights, nan / "model.safetensors")
    no_state = _crafted(tmp_path, model_dir, "no-state")
    (no_state / STATE_DIR).mkdir()
    (no_state / STATE_DIR / "state.json").write_text("{}")
    train = ["train", "--data", str(text), "--out", out, *SMALL]
    return [
        ([*train[:-len(SMALL)], "--hidden", "0"], "--hidden must be an integer >= 1, got 0"),
        ([*train[:-len(SMALL)], "--hidden", "-1"], "--hidden must be an integer >= 1, got -1"),
        ([*train[:-len(SMALL)], "--layers", "0"], "--layers must be an integer >= 1 and <= 256, got 0"),
        ([*train, "--clip", "-1"], "--clip must be a finite number > 0, got -1.0"),
        ([*train, "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        ([*train, "--dropout", "1.5"], "--dropout must be a number in [0, 1), got 1.5"),
        ([*train, "--cell", "foo"], "cell 'foo' is unknown"),
        ([*train, "--device", "tpu"], "--device must be auto or a torch device"),
        ([*train[:4], str(a_file), *SMALL], "is a file, not a folder for a model"),
        ([*train[:4], str(theirs), *SMALL], "holds files that are not an rnnkit model (results.json)"),
        ([*train[:4], "/proc/rnnkit/model", *SMALL], "/proc/rnnkit"),
        ([*train[:4], m, *SMALL], "already holds a model: use --resume"),
        (["train", "--data", str(binary), "--out", out, *SMALL], "binary.txt looks like a binary file"),
        (["train", "--data", str(latin), "--out", out, *SMALL], "is not UTF-8 text"),
        (["train", "--data", str(empty), "--out", out, *SMALL], "file is empty"),
        (["train", "--data", str(text), "--valid", str(one), "--out", out, *SMALL], "valid text has 1 token"),
        (["train", "--data", str(text), "--out", str(no_state), "--resume", "--optimizer", "adamw", "--lr", "0.01", *SMALL],
         "trainer state in"),
        (["predict", m, "x", "--top-k", "0"], "--top-k must be a positive integer, got 0"),
        (["predict", m], "give a prompt, or --prompt-file"),
        (["predict", m, "x", "--prompt-file", str(text)], "not both"),
        (["predict", m, "--prompt-file", str(latin)], "is not UTF-8 text"),
        (["predict", m, "--prompt-file", str(tmp_path / "none.txt")], "No such file or directory"),
        (["predict", str(tmp_path / "none"), "x"], "model directory not found"),
        (["predict", str(text), "x"], "model directory not found"),
        (["predict", str(nan), "x"], "non-finite values"),
        (["predict", str(_crafted(tmp_path, model_dir, "str", hidden_size="16")), "x"], "hidden_size must be an integer"),
        (["predict", str(_crafted(tmp_path, model_dir, "float", hidden_size=16.0)), "x"], "hidden_size must be an integer"),
        (["predict", str(_crafted(tmp_path, model_dir, "foo", cell="foo")), "x"], "cell 'foo' is unknown"),
        (["predict", str(_crafted(tmp_path, model_dir, "neg", num_layers=-1)), "x"], "num_layers must be an integer >= 1 and <= 256, got -1"),
        (["predict", str(_crafted(tmp_path, model_dir, "big", hidden_size=6000)), "x"], "do not match the model"),
        (["generate", m, "--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["generate", m, "--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["generate", m, "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["generate", m, "--length", "0"], "--length must be a positive integer"),
        (["generate", m, "--beam", "1000000000"], "--beam must be an integer from 1 to 1024"),
        (["evaluate", m, "--data", str(binary)], "looks like a binary file"),
        (["evaluate", m, "--data", str(empty)], "file is empty"),
        (["evaluate", m, "--data", str(one)], "needs at least 2"),
        (["memory", "--steps", "-1", "--out", str(tmp_path / "mem")], "--steps must be an integer >= 0, got -1"),
        (["gradients", "--steps", "1", "--out", str(tmp_path / "g")], "--steps must be at least 2"),
        (["tasks", "adding", "--lengths", "x", "--out", str(tmp_path / "t")], "--lengths must be comma-separated"),
        (["demo", "--out", str(a_file)], "exists and is not a folder"),
        (["data", "household", "--out", str(tmp_path / "h.txt"), "--sentences", "0"], "sentences"),
        ([*train, "--seed", str(10**23)], "--seed must be an integer >= 0 and < 9223372036854775808"),
        (["generate", m, "--seed", "-1"], "--seed must be an integer >= 0"),
        (["tasks", "adding", "--seed", str(10**23), "--out", str(tmp_path / "t")], "--seed must be an integer"),
        ([*train[:-len(SMALL)], "--hidden", "2000000000", "--layers", "1"], "not enough memory"),
        (["data", "get", "ptb", "--dir", str(tmp_path / "d"), "--timeout", "1e10"], "--timeout must be a positive number"),
    ]


def test_every_bad_input_is_one_line_and_leaves_the_model_as_it_was(tmp_path, model_dir, capsys):
    before = _answer(model_dir)
    weights = (model_dir / "model.safetensors").read_bytes()
    for args, message in _bad_inputs(tmp_path, model_dir):
        try:
            code = main(args)
        except SystemExit as usage:  # argparse's own errors: also one line (see test_cli)
            code = usage.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, args
        assert len(err) == 1 and "error: " in err[0] and message in err[0], (args, err)
        assert "Traceback" not in err[0]
    assert (model_dir / "model.safetensors").read_bytes() == weights
    assert _answer(model_dir) == before


def test_a_tiny_temperature_generates_greedily_instead_of_failing(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "the cow", "--length", "3", "--temperature", "1e-320"]) == 0
    tiny = capsys.readouterr().out
    assert main(["generate", str(model_dir), "--prompt", "the cow", "--length", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tiny


def test_a_prompt_comes_from_a_file_or_standard_input(tmp_path, model_dir, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the cow in the barn says\n")
    assert main(["predict", str(model_dir), "--prompt-file", str(prompt), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["prompt"] == "the cow in the barn says"
    assert main(["predict", str(model_dir), "the cow in the barn says", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_file
    done = subprocess.run([*RNNKIT, "generate", str(model_dir), "--prompt-file", "-", "--length", "2", "--beam", "2"],
                          input="the cow", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("the cow ")


def test_a_folder_of_someone_elses_files_is_written_only_when_forced(tmp_path, model_dir, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    args = ["train", "--data", str(model_dir.parent / "animals.txt"), "--out", str(theirs), "--epochs", "1", *SMALL]
    assert main(args) == 1
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]  # nothing written, not even a lock
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    assert (theirs / "notes.txt").read_text() == "mine" and (theirs / "model.safetensors").exists()


def test_resume_where_the_first_run_was_killed_before_its_first_save_starts_afresh(tmp_path, model_dir, capsys):
    out = tmp_path / "early"
    out.mkdir()
    (out / ".lock").write_text("12345\n")  # what a run killed while building its corpus leaves
    (out / "data").mkdir()
    args = ["train", "--data", str(model_dir.parent / "animals.txt"), "--out", str(out), "--epochs", "1", *SMALL]
    assert main([*args, "--resume"]) == 0
    assert "holds no model yet" in capsys.readouterr().err
    load_model(out)


def test_a_divergence_never_reaches_a_checkpoint_and_the_run_resumes_at_a_lower_rate(tmp_path, model_dir, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(model_dir.parent / "animals.txt"), "--out", str(out), "--epochs", "1",
            "--optimizer", "sgd", "--checkpoint-every", "3", *SMALL]
    assert main([*base, "--lr", "1"]) == 0
    base = [*base, "--resume", "--epochs", "3"]
    assert main([*base, "--lr", "1e38", "--clip", "1e38"]) == 1  # the update overflows within a few steps
    err = capsys.readouterr().err
    assert "the loss became" in err or "weights became non-finite" in err
    state = json.loads((out / STATE_DIR / "state.json").read_text())
    for path in [out / "model.safetensors", *(out / STATE_DIR).glob("*.safetensors")]:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path
    capsys.readouterr()
    assert main([*base, "--lr", "0.5"]) == 0  # the same run goes on, at a lower rate
    assert "test perplexity" in capsys.readouterr().out
    done = json.loads((out / "results.json").read_text())
    assert done["steps"] > state["step"] and done["epochs_done"] == 3
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.5


def test_resume_removes_what_a_killed_run_left_behind(tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.01, schedule="none", checkpoint_every=5,
                         device="cpu")
    fit(_model(), RegressionTask(steps=10, batch=8), config, tmp_path / "m")
    state = tmp_path / "m" / STATE_DIR
    (tmp_path / "m" / "data").mkdir()
    orphans = [state / "model-3-0.safetensors", state / ".state.json.abc.tmp", tmp_path / "m" / ".model.safetensors.x.tmp",
               tmp_path / "m" / "data" / ".train.bin.y.tmp"]
    for path in orphans:
        path.write_bytes(b"half")
    fit(_model(), RegressionTask(steps=10, batch=8), config.__class__(**{**config.to_dict(), "epochs": 3}),
        tmp_path / "m", resume=True)
    assert not any(path.exists() for path in orphans)
    named = json.loads((state / "state.json").read_text())["files"]
    assert sorted(p.name for p in state.iterdir()) == sorted([*named, "state.json"])
    assert named[0].startswith("model-30-")


def test_a_one_token_validation_split_is_refused_when_the_corpus_is_built(tmp_path):
    text = animal_corpus(tmp_path / "a.txt", 50)
    (tmp_path / "v.txt").write_text("\n")  # one <eos>
    with pytest.raises(RnnkitError, match="valid text has 1 token"):
        build_corpus(text, tmp_path / "v.txt", text, out_dir=tmp_path / "data")


def test_loading_a_config_that_claims_a_huge_model_takes_no_memory(tmp_path, model_dir):
    crafted = _crafted(tmp_path, model_dir, "huge", hidden_size=300000)
    probe = (
        "import resource, sys\n"
        "from rnnkit import load_model\n"
        "from rnnkit.errors import RnnkitError\n"
        "def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "before = peak()\n"
        "try:\n"
        f"    load_model({str(crafted)!r})\n"
        "except RnnkitError as e:\n"
        "    print(peak() - before, e)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    grown, message = done.stdout.split(" ", 1)
    assert "do not match the model" in message and "300000" in message
    assert int(grown) < 50, f"loading grew the peak memory by {grown} MiB"


@pytest.mark.slow
def test_a_second_trainer_on_the_same_directory_is_refused_and_the_first_finishes(tmp_path):
    text = animal_corpus(tmp_path / "a.txt", 3000)
    out = tmp_path / "m"
    args = [*RNNKIT, "train", "--data", str(text), "--out", str(out), "--epochs", "3", "--checkpoint-every", "20", *SMALL]
    first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / STATE_DIR / "state.json").exists():
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "being written by another rnnkit process" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # the first run's alone
    load_model(out)
    # the lock goes with its process, SIGKILL included: the next writer gets it
    victim = subprocess.Popen([*args[:-len(SMALL)], "--out", str(tmp_path / "k"), *SMALL, "--epochs", "50"])
    while not (tmp_path / "k" / STATE_DIR / "state.json").exists():
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = subprocess.run([*args[:-len(SMALL)], "--out", str(tmp_path / "k"), *SMALL, "--epochs", "1", "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr


def test_evaluate_reads_the_text_through_a_memmap_not_memory(model_dir, monkeypatch, capsys):
    import numpy as np

    from rnnkit.cli import use

    seen = []
    real = use.evaluate
    monkeypatch.setattr(use, "evaluate", lambda model, ids: seen.append(type(ids)) or real(model, ids))
    assert main(["evaluate", str(model_dir), "--data", str(model_dir.parent / "animals.txt"), "--json"]) == 0
    assert seen == [np.memmap] and json.loads(capsys.readouterr().out)["tokens"] > 1000


def test_resume_goes_on_with_the_saved_settings_and_changes_only_what_a_flag_names(tmp_path, model_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(model_dir.parent / "animals.txt"), "--out", str(out), *SMALL]
    assert main([*args, "--epochs", "1", "--lr", "0.7", "--schedule", "cosine", "--optimizer", "sgd"]) == 0
    assert main([*args, "--resume", "--epochs", "2"]) == 0  # no --lr, --schedule or --optimizer again
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["lr"], saved["schedule"], saved["optimizer"], saved["epochs"]) == (0.7, "cosine", "sgd", 2)


def test_a_damaged_state_json_never_costs_the_checkpoint_it_names(tmp_path):
    from rnnkit.training.checkpoint import remove_orphans

    config = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.01, schedule="none", checkpoint_every=5,
                         device="cpu")
    fit(_model(), RegressionTask(steps=10, batch=8), config, tmp_path / "m")
    state = tmp_path / "m" / STATE_DIR
    tensors = sorted(state.glob("*.safetensors"))
    for damaged in ('{"state": {}}', "[1, 2]", "{not json"):
        (state / "state.json").write_text(damaged)
        remove_orphans(tmp_path / "m")
        assert sorted(state.glob("*.safetensors")) == tensors


def test_generation_without_a_seed_draws_anew_and_with_one_repeats(model_dir, capsys):
    texts = []
    for seed in ([], [], ["--seed", "3"], ["--seed", "3"]):
        assert main(["generate", str(model_dir), "--length", "30", *seed]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] != texts[1] and texts[2] == texts[3]


def test_nothing_to_train_is_not_an_error_for_the_diagnostics(tmp_path, capsys):
    assert main(["tasks", "adding", "--train-steps", "0", "--lengths", "5", "--cells", "gru", "--out", str(tmp_path / "t")]) == 0
    assert main(["memory", "--steps", "0", "--models", "gru", "--train-sentences", "40", "--test-sentences", "20",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 0
