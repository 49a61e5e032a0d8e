"""Training end to end: what the model learns, checkpoints, resume, interruption, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.training import load_model
from rnnkit.cli import main
from rnnkit.apps.lm import LMConfig, LMTrainConfig, beam_search, predict_next, sample, train
from rnnkit.data import build_corpus

from helpers import ANIMALS, animal_corpus, kill_once_saved

SMALL = ["--hidden", "48", "--layers", "1", "--batch-size", "8", "--bptt", "12", "--optimizer", "adamw", "--lr", "0.01", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small LSTM trained on the animal corpus through the Python API (a few seconds)."""
    root = tmp_path_factory.mktemp("trained")
    text = animal_corpus(root / "animals.txt", 1500)
    corpus = build_corpus(text, out_dir=root / "model" / "data", tokenizer="word")
    config = LMTrainConfig(epochs=6, batch_size=8, bptt=12, optimizer="adamw", lr=0.01, checkpoint_every=None)
    model_config = LMConfig(vocab_size=corpus.tokenizer.vocab_size, hidden_size=48, num_layers=1)
    summary = train(root / "model", corpus, model_config, config)
    return root, corpus, summary


def test_learns_far_better_than_a_unigram_model(trained):
    root, corpus, summary = trained
    counts = Counter(corpus.train.tolist())
    total = sum(counts.values())
    unigram_loss = -sum(math.log(counts.get(int(t), 0.5) / total) for t in corpus.valid) / len(corpus.valid)
    valid = math.exp(summary["best_valid"])
    # the sentences are 80% predictable once the animal is known: far below the unigram's ~20
    assert valid < 0.35 * math.exp(unigram_loss), (valid, math.exp(unigram_loss))
    assert [r["step"] for r in summary["history"]] == sorted(r["step"] for r in summary["history"])


def test_cpu_bf16_multiplies_in_bf16_and_learns_as_float32_does(trained, tmp_path):
    root, corpus, summary = trained
    config = LMTrainConfig(epochs=6, batch_size=8, bptt=12, optimizer="adamw", lr=0.01, checkpoint_every=None,
                           cpu_bf16=True)
    bf16 = train(tmp_path / "model", corpus, LMConfig(vocab_size=corpus.tokenizer.vocab_size, hidden_size=48,
                                                      num_layers=1), config)
    ours, theirs = load_file(tmp_path / "model" / "model.safetensors"), load_file(root / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in ours.values())  # the weights stay float32
    assert not all(torch.equal(ours[name], theirs[name]) for name in theirs)  # bf16's rounding took part
    assert abs(bf16["best_valid"] - summary["best_valid"]) < 0.05, (bf16["best_valid"], summary["best_valid"])


@pytest.mark.parametrize("animal", sorted(ANIMALS))
def test_predict_puts_the_certain_continuation_first(trained, animal):
    root, _, _ = trained
    model, tokenizer = load_model(root / "model")
    predictions, unknown = predict_next(model, tokenizer, f"the {animal} by the river says", top_k=3)
    assert predictions[0].token == ANIMALS[animal] and predictions[0].prob > 0.5 and unknown == []


def test_generation_modes(trained):
    root, _, _ = trained
    model, tokenizer = load_model(root / "model")
    greedy = "".join(sample(model, tokenizer, "the owl at night says", length=2, temperature=0))
    assert greedy.split() == ["hoot", "."]
    seeded = ["".join(sample(model, tokenizer, "the", length=15, top_k=5, top_p=0.9, seed=7)) for _ in range(2)]
    assert seeded[0] == seeded[1] and len(seeded[0].split()) >= 10
    text, logp = beam_search(model, tokenizer, "the duck in the barn says", length=2, beam=3)
    assert text.split() == ["quack", "."] and logp < 0


def test_model_directory_holds_no_pickles_and_metrics(trained):
    root, _, _ = trained
    directory = root / "model"
    config = json.loads((directory / "config.json").read_text())
    assert config["format"] == "rnnkit-model" and config["model"]["cell"] == "lstm"
    load_file(directory / "model.safetensors")  # plain tensors
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all("valid_perplexity" in json.loads(line) for line in lines)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in directory.glob("trainer_state/*"))


def test_cli_evaluate_predict_generate(trained, capsys, tmp_path):
    root, _, _ = trained
    directory = str(root / "model")
    assert main(["evaluate", directory, "--data", str(root / "animals.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 10000 and 1 < result["perplexity"] < 3
    assert main(["predict", directory, "the zebra says", "--json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["prompt"] == "the zebra says" and len(out["predictions"]) == 2
    assert out["predictions"][0]["prob"] >= out["predictions"][1]["prob"]
    assert "not in the vocabulary, read as <unk>: zebra" in captured.err
    assert main(["generate", directory, "--prompt", "the cat", "--length", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the cat ")
    assert main(["generate", directory, "--prompt", "the sheep on the hill", "--length", "2", "--beam", "3"]) == 0
    assert capsys.readouterr().out == "the sheep on the hill says baa\n"


def _one_line_error(capsys, code, *args):
    assert main(list(args)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_give_one_line_errors(capsys, tmp_path, corpus_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a few words only\n" * 3)
    out = str(tmp_path / "m")
    assert "not found" in _one_line_error(capsys, 1, "train", "--data", str(tmp_path / "nope.txt"), "--out", out)
    assert "empty" in _one_line_error(capsys, 1, "train", "--data", str(empty), "--out", out)
    assert "UTF-8" in _one_line_error(capsys, 1, "train", "--data", str(latin), "--out", out)
    assert "too small to hold out a valid split" in _one_line_error(capsys, 1, "train", "--data", str(tiny), "--out", out)
    err = _one_line_error(capsys, 1, "train", "--data", str(tiny), "--valid", str(tiny), "--test", str(tiny), "--out", out)
    assert "too few for one batch" in err
    assert "model directory not found" in _one_line_error(capsys, 1, "predict", str(tmp_path / "none"), "x")


def test_errors_name_the_flag_that_set_the_value(capsys, trained, tmp_path, corpus_file):
    root, _, _ = trained
    directory = str(root / "model")
    assert "--top-k must be a positive integer, got 0" in _one_line_error(capsys, 1, "predict", directory, "x", "--top-k", "0")
    assert "temperature must be a finite number >= 0" in _one_line_error(
        capsys, 1, "generate", directory, "--temperature", "nan")
    assert "beam must be an integer from 1 to 1024" in _one_line_error(
        capsys, 1, "generate", directory, "--beam", "1000000000")
    out = str(tmp_path / "m")
    assert "--hidden must be an integer >= 1, got 0" in _one_line_error(
        capsys, 1, "train", "--data", str(corpus_file), "--out", out, "--hidden", "0")
    assert "--batch-size must be an integer >= 1, got -2" in _one_line_error(
        capsys, 1, "train", "--data", str(corpus_file), "--out", out, "--batch-size", "-2")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"num_layers": 0}}))  # set in a file: the field's own name
    assert "num_layers must be an integer >= 1 and <= 256, got 0" in _one_line_error(
        capsys, 1, "train", "--data", str(corpus_file), "--out", out, "--config", str(config))
    assert "cell 'foo' is unknown" in _one_line_error(
        capsys, 1, "train", "--data", str(corpus_file), "--out", out, "--cell", "foo")


def test_binary_file_is_named(capsys, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"abc\x00\x01\x02" * 10)
    err = _one_line_error(capsys, 1, "train", "--data", str(binary), "--out", str(tmp_path / "m"))
    assert "binary.txt" in err


def test_damaged_model_directory(capsys, trained, tmp_path):
    root, _, _ = trained
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (damaged / name).write_bytes((root / "model" / name).read_bytes())
    (damaged / "model.safetensors").write_bytes(b"not safetensors at all")
    assert "damaged" in _one_line_error(capsys, 1, "predict", str(damaged), "the cow says")
    (damaged / "config.json").write_text("{")
    assert "damaged" in _one_line_error(capsys, 1, "evaluate", str(damaged), "--data", str(root / "animals.txt"))


def test_resume_refuses_another_config_or_tokenizer(capsys, tmp_path, corpus_file):
    out = str(tmp_path / "m")
    args = ["train", "--data", str(corpus_file), "--out", out, "--epochs", "1", *SMALL]
    assert main(args) == 0
    capsys.readouterr()
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert "another model config (changed: hidden_size)" in _one_line_error(capsys, 1, *args[:-len(SMALL)], "--resume", "--hidden", "32", "--quiet")
    assert "another tokenizer" in _one_line_error(capsys, 1, *args, "--resume", "--tokenizer", "char")
    assert "already holds a model" in _one_line_error(capsys, 1, *args)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_the_last_good_model(capsys, tmp_path, corpus_file):
    out = tmp_path / "m"
    err = _one_line_error(
        capsys, 1, "train", "--data", str(corpus_file), "--out", str(out), "--cell", "elman", "--optimizer", "sgd",
        "--lr", "1e38", "--clip", "1e38", "--hidden", "16", "--layers", "1", "--bptt", "5", "--batch-size", "4", "--quiet",
    )
    assert "the loss became" in err and "at step" in err and "last good checkpoint" in err
    model, _ = load_model(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    text = animal_corpus(tmp_path / "animals.txt", 1200)
    common = ["--data", str(text), "--epochs", "3", "--checkpoint-every", "7", "--cell", "gru", "--dropout", "0.2",
              "--hidden", "32", "--layers", "2", "--batch-size", "8", "--bptt", "10", "--quiet", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rnnkit", "train"]
    subprocess.run([*command, *common, "--out", str(tmp_path / "straight")], check=True, env=env, timeout=600)
    victim = subprocess.Popen([*command, *common, "--out", str(tmp_path / "killed")], env=env)
    assert kill_once_saved(victim, tmp_path / "killed", 14) < 3 * 120  # killed part-way
    subprocess.run([*command, *common, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, timeout=600)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    text = animal_corpus(tmp_path / "animals.txt", 3000)
    out = tmp_path / "m"
    args = [sys.executable, "-m", "rnnkit", "train", "--data", str(text), "--out", str(out), *SMALL]
    # many epochs, so that the signal surely lands mid-training, after the first checkpoint
    proc = subprocess.Popen([*args, "--epochs", "200", "--checkpoint-every", "20"], stderr=subprocess.PIPE, text=True)
    state = out / "trainer_state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "continue with --resume" in err
    step = json.loads(state.read_text())["step"]
    assert step >= 20
    done = subprocess.run([*args, "--epochs", "1", "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "test perplexity" in done.stdout


def test_exponential_schedule_keeps_the_rate_then_decays_it_every_epoch(tmp_path, corpus_file):
    corpus = build_corpus(corpus_file, out_dir=tmp_path / "m" / "data", tokenizer="word")
    config = LMTrainConfig(epochs=5, batch_size=8, bptt=12, lr=2.0, schedule="exponential", decay_start=2,
                         lr_decay=0.5, checkpoint_every=None)
    summary = train(tmp_path / "m", corpus, LMConfig(corpus.tokenizer.vocab_size, hidden_size=8, num_layers=1), config)
    # epoch j trains with 2 * 0.5 ** max(0, j + 1 - 2); the rate recorded after epoch i is epoch i + 1's
    assert [r["lr"] for r in summary["history"]] == pytest.approx([2.0, 1.0, 0.5, 0.25, 0.125])


def test_config_presets_by_name_and_their_errors(capsys, tmp_path, corpus_file):
    from rnnkit.apps.lm.presets import presets

    assert {"ptb-small", "ptb-medium", "ptb-large", "ptb-cpu"} <= set(presets())
    # the preset's settings apply, flags override them: a tiny version of the small PTB recipe
    args = ["train", "--data", str(corpus_file), "--out", str(tmp_path / "p"), "--config", "ptb-small",
            "--hidden", "8", "--epochs", "1", "--quiet"]
    assert main(args) == 0
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["train"]["schedule"] == "exponential" and saved["train"]["bptt"] == 20
    assert saved["model"]["hidden_size"] == 8 and saved["model"]["num_layers"] == 2
    capsys.readouterr()
    _one_line_error(capsys, 1, "train", "--data", str(corpus_file), "--out", str(tmp_path / "q"), "--config", "ptb-tiny")
