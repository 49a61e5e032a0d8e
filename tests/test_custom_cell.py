"""A cell written by a user: registered by name, it runs in Recurrent (the step loop, having no
fused kernel) and trains in the language model from the command line."""

import json
from importlib.metadata import EntryPoint

import pytest
import torch
from torch import nn

from rnnkit import Recurrent, load_model, predict_next, register_cell
from rnnkit.errors import RnnkitError
from rnnkit.nn import cells
from rnnkit.nn.cells import Cell

from helpers import ANIMALS, animal_corpus


class MinimalGatedCell(Cell):
    """The minimal gated unit (Zhou et al. 2016): one forget gate f_t, and
    h_t = (1 - f_t) h_{t-1} + f_t tanh(U_h x_t + W_h (f_t * h_{t-1}) + b_h)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.U = nn.Parameter(torch.empty(2 * hidden_size, input_size))
        self.W = nn.Parameter(torch.empty(2 * hidden_size, hidden_size))
        self.b = nn.Parameter(torch.empty(2 * hidden_size))
        self.reset_parameters()

    def forward(self, x, h):
        self._check(x, h)
        H = self.hidden_size
        f = torch.sigmoid(x @ self.U[:H].T + h @ self.W[:H].T + self.b[:H])
        candidate = torch.tanh(x @ self.U[H:].T + (f * h) @ self.W[H:].T + self.b[H:])
        h = (1 - f) * h + f * candidate
        return h, h


@pytest.fixture
def mgu():
    register_cell("mgu", MinimalGatedCell)
    yield "mgu"
    cells.CELLS.pop("mgu", None)


def test_a_registered_cell_runs_in_recurrent_through_the_step_loop(mgu):
    torch.manual_seed(0)
    rnn = Recurrent(mgu, 3, 5, num_layers=2, dropout=0.0).double()
    assert not rnn.has_kernel
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out, h = rnn(x)  # backend "auto" falls back to the loop
    # by hand: layer by layer, step by step
    inputs = x
    for layer, cell in enumerate(rnn.cells):
        s, steps = torch.zeros(2, 5, dtype=torch.float64), []
        for t in range(7):
            y, s = cell(inputs[t], s)
            steps.append(y)
        inputs = torch.stack(steps)
        torch.testing.assert_close(h[layer], s)
    torch.testing.assert_close(out, inputs)
    torch.testing.assert_close(rnn.trace(x).outputs, out)
    # one step at a time equals the whole sequence
    state = rnn.init_state(2)
    for t in range(7):
        y, state = rnn.step(x[t], state)
        torch.testing.assert_close(y, out[t])
    with pytest.raises(ValueError, match="'mgu' has no fused kernel"):
        Recurrent(mgu, 3, 5, backend="fused")
    assert torch.autograd.gradcheck(lambda x: rnn(x)[0], (x[:3].requires_grad_(),))


def test_register_cell_checks_what_it_is_given(mgu):
    with pytest.raises(TypeError, match="subclass of rnnkit.nn.cells.Cell"):
        register_cell("linear", nn.Linear)
    with pytest.raises(ValueError, match="taken by LSTMCell"):
        register_cell("lstm", MinimalGatedCell)
    with pytest.raises(ValueError, match="identifier"):
        register_cell("my cell", MinimalGatedCell)
    assert register_cell("mgu", MinimalGatedCell) is MinimalGatedCell  # the same class again is fine


def test_an_installed_package_offers_a_cell_through_an_entry_point(monkeypatch):
    point = EntryPoint(name="mgu_plugin", value=f"{__name__}:MinimalGatedCell", group=cells.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cells, "entry_points", lambda group, name: [p for p in [point] if p.name == name])
    monkeypatch.setattr(cells, "CELLS", dict(cells.CELLS))
    assert cells.cell_class("mgu_plugin") is MinimalGatedCell
    with pytest.raises(ValueError, match="'nothing' is unknown"):
        cells.cell_class("nothing")


def test_a_registered_cell_trains_in_the_language_model_with_cell_name(mgu, tmp_path, cli, capsys):
    text = animal_corpus(tmp_path / "animals.txt", 1500)
    out = tmp_path / "m"
    assert cli(["train", "--data", str(text), "--out", str(out), "--cell", mgu, "--hidden", "32", "--layers", "1",
                "--epochs", "8", "--batch-size", "8", "--bptt", "12", "--optimizer", "adamw", "--lr", "0.01",
                "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["cell"] == "mgu"
    model, tokenizer = load_model(out)
    assert isinstance(model.rnn.cells[0], MinimalGatedCell)
    # the sound follows from the animal three or four words back: learnt only by remembering it
    for animal, sound in ANIMALS.items():
        predictions, _ = predict_next(model, tokenizer, f"the {animal} by the river says", top_k=1)
        assert predictions[0].token == sound and predictions[0].prob > 0.5
    cells.CELLS.pop("mgu")
    with pytest.raises(RnnkitError, match="'mgu' is unknown.*register_cell"):
        load_model(out)
