"""The ONNX export: its graph computes what the PyTorch model computes, its int8 and int4 forms stay close,
an export older than the weights or a missing one is refused in one line, and `rnnkit predict` and
`generate` with --runtime onnx say what they say with PyTorch."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import household_model_dir

from rnnkit import LMConfig, LMTrainConfig, RNNLanguageModel
from rnnkit.apps.lm import next_log_probs
from rnnkit.apps.lm.onnx import OnnxLanguageModel, export_directory, export_onnx, load_onnx
from rnnkit.apps.lm.task import TOKENIZER
from rnnkit.data import EOS, UNK, WordTokenizer
from rnnkit.errors import RnnkitError
from rnnkit.training import load_model
from rnnkit.training.checkpoint import save_model

SEED = "I picked up the remote controller on the couch and turned on the"


def _random_lm(cell: str, seed: int = 0) -> RNNLanguageModel:
    torch.manual_seed(seed)
    model = RNNLanguageModel(LMConfig(vocab_size=40, cell=cell, hidden_size=16, embedding_size=12, num_layers=2)).eval()
    with torch.no_grad():
        model.start.normal_()  # a calibrated start state, not zeros: the export must carry it
    return model


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.fixture(scope="module")
def household(tmp_path_factory) -> Path:
    """The household model (it says "television" after SEED), exported in float32, int8 and int4."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest's one_thread, which a module's fixture comes before
    try:
        directory = household_model_dir(tmp_path_factory.mktemp("onnx") / "model")
    finally:
        torch.set_num_threads(threads)
    export_directory(directory, ["int8", "int4"])
    return directory


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_graph_matches_pytorch_on_padded_prompts_and_steps(cell, tmp_path):
    model = _random_lm(cell)
    onnx_model = OnnxLanguageModel(export_onnx(model, tmp_path / "step.onnx"), model.start)
    ids, lengths = torch.randint(0, 40, (7, 3)), torch.tensor([7, 2, 5])  # padded after each end
    with torch.no_grad():
        logits, state = model(ids, model.start_state(3), lengths, last_only=True)
        log_probs, tokens = logits.log_softmax(-1), torch.randint(0, 40, (3,))
        step_log_probs, next_state = model.step(tokens, state)
    got, got_state = onnx_model(ids, onnx_model.start_state(3), lengths)
    torch.testing.assert_close(got, log_probs, atol=1e-4, rtol=0)
    for ours, theirs in zip(_parts(got_state), _parts(state), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    got, got_state = onnx_model.step(tokens, got_state)
    torch.testing.assert_close(got, step_log_probs, atol=1e-4, rtol=0)
    for ours, theirs in zip(_parts(got_state), _parts(next_state), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision, bound", [("int8", 0.01), ("int4", 0.03)])
def test_quantised_graphs_predict_what_float32_predicts(household, precision, bound):
    torch_model, tokenizer = load_model(household)
    quantised, _ = load_onnx(household, precision)
    expected = next_log_probs(torch_model, tokenizer, [SEED])[0].exp()  # (V,)
    got = next_log_probs(quantised, tokenizer, [SEED])[0].exp()
    # int8 weights lie within half a step (max |w| / 254 of their row) of the float ones, and each
    # product's input within half a step of its range: a few per mille of each pre-activation, and
    # the distribution moves by a few per mille in total variation (0.002 measured). int4's output
    # layer lies within about max |w| / 15 of each block of 32: several times coarser (0.008 measured)
    assert tokenizer.token(int(got.argmax())) == "television"
    assert 0.5 * float((got - expected).abs().sum()) < bound


def test_cli_export_then_predict_and_generate_with_onnx(household, cli, capsys):
    outputs = {}
    for runtime in ("torch", "onnx", "onnx-int8", "onnx-int4"):
        assert cli(["predict", str(household), SEED, "--json", "--runtime", runtime]) == 0
        outputs[runtime] = json.loads(capsys.readouterr().out)["predictions"]
    assert {runtime: p[0]["token"] for runtime, p in outputs.items()} == dict.fromkeys(outputs, "television")
    assert [p["prob"] for p in outputs["onnx"]] == pytest.approx([p["prob"] for p in outputs["torch"]], abs=1e-5)
    texts = {}
    for runtime in ("torch", "onnx"):
        for flags in (["--temperature", "0"], ["--beam", "3"], ["--seed", "1"]):
            command = ["generate", str(household), "--prompt", SEED, "--length", "8", "--runtime", runtime, *flags]
            assert cli(command) == 0
            texts[runtime, flags[0]] = capsys.readouterr().out
    assert all(texts["onnx", flag] == texts["torch", flag] for flag in ("--temperature", "--beam", "--seed"))


def test_cli_export_says_what_it_wrote(tmp_path, cli, capsys):
    directory = _model_dir(tmp_path / "model", _random_lm("gru"))
    assert cli(["export", str(directory), "--int8", "--int4"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines()] == [str(directory / "onnx" / name) for name in (
        "step.onnx", "step.int8.onnx", "step.int4.onnx", "start.safetensors", "export.json")]
    assert err == ""  # nothing from the quantisers' logging
    assert cli(["export", str(directory), "--format", "onnx"]) == 0
    written = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in written] == [
        str(directory / "onnx" / name) for name in ("step.onnx", "start.safetensors", "export.json")]
    assert sorted(p.name for p in (directory / "onnx").iterdir()) == ["export.json", "start.safetensors", "step.onnx"]
    assert cli(["export", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == f"rnnkit: error: model directory not found: {tmp_path / 'missing'}\n"
    assert not (tmp_path / "missing").exists()


def _model_dir(directory: Path, model: RNNLanguageModel) -> Path:
    tokenizer = WordTokenizer([UNK, EOS, *(f"w{i}" for i in range(model.config.vocab_size - 2))])
    save_model(directory, model, {TOKENIZER: tokenizer}, LMTrainConfig())
    return directory


def test_an_export_older_than_the_weights_is_refused(tmp_path):
    directory = _model_dir(tmp_path / "model", _random_lm("lstm"))
    export_directory(directory)
    load_onnx(directory)
    _model_dir(directory, _random_lm("lstm", seed=1))  # trained again: new weights, the same shapes
    with pytest.raises(RnnkitError, match=r"older than the model's weights .* `rnnkit export .* --format onnx` again"):
        load_onnx(directory)


def test_missing_exports_and_onnxruntime_say_what_to_run(tmp_path, cli, capsys, monkeypatch):
    directory = _model_dir(tmp_path / "model", _random_lm("lstm"))
    assert cli(["predict", str(directory), "w1 w2", "--runtime", "onnx"]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert f"has no ONNX export: run `rnnkit export {directory} --format onnx` first" in error
    export_directory(directory)  # float32 only
    for precision in ("int8", "int4"):
        with pytest.raises(RnnkitError, match=rf"no {precision} ONNX export: run `rnnkit export .* --{precision}`"):
            load_onnx(directory, precision)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert cli(["generate", str(directory), "--runtime", "onnx", "--length", "2"]) == 1
    error = capsys.readouterr().err
    assert error == "rnnkit: error: running an ONNX export needs the onnxruntime package: pip install onnxruntime\n"


def test_a_cell_without_an_onnx_node_is_refused(tmp_path):
    with pytest.raises(RnnkitError, match="'mingru' cell cannot be exported to ONNX"):
        export_onnx(_random_lm("mingru"), tmp_path / "step.onnx")
