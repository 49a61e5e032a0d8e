"""minGRU and minLSTM and the linear scan they train with: scan == step loop in float64 (outputs,
final states, gradients), gradcheck, saturated gates in float32, a step equal to the scan on one
token, and a small minGRU language model that keeps the cue over a distance."""

import itertools
import json

import pytest
import torch

from rnnkit import LMConfig, RNNLanguageModel, Recurrent, load_model, predict_next
from rnnkit.demos.household.memory import MemoryConfig, make_data, measure
from rnnkit.errors import ParameterError
from rnnkit.nn import scan
from rnnkit.nn.cells import MinGRUCell, MinLSTMCell
from rnnkit.nn.scan import linear_scan

from helpers import ANIMALS, animal_corpus


def _loop(a, b, h0):
    """The recurrence, one step at a time, through autograd."""
    hs, h = [], h0
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        hs.append(h)
    return torch.stack(hs)


def _inputs(T, seed=0, B=3, H=4):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(T, B, H, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(T, B, H, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64).requires_grad_()
    return a, b, h0


@pytest.mark.parametrize("T", [1, 2, 7, 33])
@pytest.mark.parametrize("method,chunk", [("chunked", 1), ("chunked", 2), ("chunked", 5), ("chunked", 64),
                                          ("blocked", 1), ("blocked", 2), ("blocked", 5), ("blocked", 64), ("log", 1)])
def test_every_method_and_chunk_equals_the_step_loop_with_gradients(T, method, chunk):
    a, b, h0 = _inputs(T)
    weights = torch.randn(T, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _loop(a, b, h0)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (a, b, h0))
    h = linear_scan(a, b, h0, method, chunk)
    grads = torch.autograd.grad((h * weights).sum(), (a, b, h0))
    torch.testing.assert_close(h, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method,chunk", [("chunked", 1), ("chunked", 4), ("blocked", 4), ("log", 1)])
def test_gradcheck(method, chunk):
    a, b, h0 = _inputs(6, seed=2, B=2, H=3)
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, method, chunk), (a, b, h0))


def test_bad_method_or_chunk_names_the_parameter():
    a, b, h0 = _inputs(3)
    with pytest.raises(ParameterError, match="method must be one of chunked, blocked, log"):
        linear_scan(a, b, h0, "magic")
    with pytest.raises(ParameterError, match="chunk must be a positive integer"):
        linear_scan(a, b, h0, "chunked", 0)


def _assert_scan_equals_reference(rnn, x, state, lengths):
    """Outputs, final state and every parameter's gradient, backend "scan" against "reference"."""
    results = {}
    for backend in ("scan", "reference"):
        rnn.backend = backend
        rnn.zero_grad()
        out, h = rnn(x, state, lengths)
        (out.sum() + (h**2).sum()).backward()
        results[backend] = [out.detach(), h.detach(), *(p.grad.clone() for p in rnn.parameters())]
    for got, want in zip(results["scan"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


CASES = list(itertools.product(["mingru", "minlstm"], [1, 2], [False, True], [False, True], [1, 9]))


@pytest.mark.parametrize("cell,layers,bidirectional,with_lengths,T", CASES)
def test_scan_backend_equals_the_reference_loop(cell, layers, bidirectional, with_lengths, T):
    torch.manual_seed(layers + 2 * bidirectional + T)
    rnn = Recurrent(cell, 3, 4, num_layers=layers, bidirectional=bidirectional).double()
    x = torch.randn(T, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([T, max(1, T - 4), 1, T, max(1, T // 2)]) if with_lengths else None
    state = torch.randn(layers * (2 if bidirectional else 1), 5, 4, dtype=torch.float64)
    _assert_scan_equals_reference(rnn, x, state, lengths)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_cuda_default_method_equals_the_reference_loop(cell, monkeypatch):
    """The method a GPU scans with by default, run here on the CPU, through padding, both
    directions and two layers, with T not a multiple of its chunk."""
    monkeypatch.setitem(scan.DEFAULTS, "cpu", scan.DEFAULTS["cuda"])
    torch.manual_seed(3)
    rnn = Recurrent(cell, 3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(150, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([150, 146, 1, 64, 65])
    _assert_scan_equals_reference(rnn, x, None, lengths)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_auto_picks_the_scan_and_carrying_state_equals_one_pass(cell):
    torch.manual_seed(0)
    rnn = Recurrent(cell, 3, 4, num_layers=2).double()
    assert rnn.has_scan and not rnn.has_kernel
    x = torch.randn(12, 2, 3, dtype=torch.float64)
    whole, h = rnn(x)
    first, state = rnn(x[:5])
    second, h2 = rnn(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(h2, h)
    with pytest.raises(ValueError, match="'lstm' is not a linear recurrence"):
        Recurrent("lstm", 3, 4, backend="scan")


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_one_step_equals_the_scan_on_one_token(cell):
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig(20, cell=cell, hidden_size=8, num_layers=2)).eval()
    ids = torch.randint(0, 20, (6, 3))
    _, state = model(ids)
    token = torch.randint(0, 20, (3,))
    logits, expected_state = model(token[None], state)
    log_probs, new_state = model.step(token, state)
    torch.testing.assert_close(log_probs, logits[0].log_softmax(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new_state, expected_state, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell_class", [MinGRUCell, MinLSTMCell])
@pytest.mark.parametrize("method", ["chunked", "blocked", "log"])
def test_saturated_gates_stay_finite_and_exact_in_float32(cell_class, method, monkeypatch):
    """Pre-activations of +-100 and +-1000 put sigmoids at 0 and 1 in float32 (exp(-100) underflows
    the products below 1e-38); the scan must stay finite and match float64."""
    torch.manual_seed(0)
    cell = cell_class(2, 6)
    with torch.no_grad():
        cell.U.copy_(torch.tensor([[100.0, -100.0], [-1000.0, 1000.0], [50.0, 50.0]]).repeat(2 * cell.parts, 1))
        cell.b.zero_()
    x = torch.randn(40, 3, 2).sign()  # +-1: every gate fully open or fully closed
    h0 = torch.randn(3, 6)
    monkeypatch.setitem(scan.DEFAULTS, "cpu", (method, 8))
    x.requires_grad_()
    h = cell.scan(x, h0)
    h.sum().backward()
    assert torch.isfinite(h).all() and torch.isfinite(x.grad).all()
    exact = cell.double().scan(x.detach().double(), h0.double())
    # the log-space scan loses digits in proportion to its logarithms' size (eps |log a| per step)
    torch.testing.assert_close(h.double(), exact, rtol=1e-3 if method == "log" else 1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_a_small_model_keeps_the_household_cue_over_the_words_between(cell):
    """The object picked up decides the device at the end: above chance (1 in 12) at 10-14 words
    from it only by remembering across the words between (measured: 0.93 for minGRU, 0.96 for
    minLSTM, at 4.5 s each)."""
    config = MemoryConfig(max_distance=14, buckets=(4, 10), train_sentences=1500, test_sentences=300, steps=1200,
                          hidden_size=64, embedding_size=32, lr=1e-2)
    result = measure(cell, make_data(config), config)
    near, far = result.accuracy
    assert near > 0.9 and far > 0.7, result.accuracy


def test_the_commands_take_the_minimal_cells(tmp_path, cli, capsys):
    """train, predict and generate with --cell mingru (the LM learns what only memory gives), then
    gradients and tasks with both cells."""
    text = animal_corpus(tmp_path / "animals.txt", 1500)
    out = tmp_path / "m"
    assert cli(["train", "--data", str(text), "--out", str(out), "--cell", "mingru", "--hidden", "32",
                "--layers", "1", "--epochs", "8", "--batch-size", "8", "--bptt", "12", "--optimizer", "adamw",
                "--lr", "0.01", "--quiet"]) == 0
    model, tokenizer = load_model(out)
    assert isinstance(model.rnn.cells[0], MinGRUCell)
    for animal, sound in ANIMALS.items():  # the sound follows the animal three or four words back
        predictions, _ = predict_next(model, tokenizer, f"the {animal} by the river says", top_k=1)
        assert predictions[0].token == sound and predictions[0].prob > 0.5
    capsys.readouterr()
    assert cli(["predict", str(out), "the cow by the river says", "--top-k", "1"]) == 0
    assert ANIMALS["cow"] in capsys.readouterr().out
    assert cli(["generate", str(out), "--prompt", "the cow", "--length", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cow")

    assert cli(["gradients", "--cells", "mingru,minlstm", "--hidden", "4", "--steps", "6", "--batch", "2",
                "--train-steps", "2", "--tanh-depth", "3", "--jacobian-batch", "1", "--out", str(tmp_path / "g")]) == 0
    assert set(json.loads((tmp_path / "g" / "gradient_flow.json").read_text())["flows"]) == {"mingru", "minlstm"}
    capsys.readouterr()
    assert cli(["tasks", "adding", "--cells", "mingru,minlstm", "--lengths", "5", "--hidden", "4", "--train-steps", "2",
                "--batch", "4", "--test-size", "8", "--out", str(tmp_path / "t")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("min")]
    assert [row[:2] for row in rows] == [["mingru", "5"], ["minlstm", "5"]]
