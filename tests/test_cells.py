"""Each cell against torch.nn's cell with the same weights, float64."""

import pytest
import torch
from torch import nn

from rnnkit.nn.cells import CELLS, ElmanCell, GRUCell, LSTMCell, make_cell

E, H, B = 5, 7, 4


def _copy_into_torch(ours, theirs):
    with torch.no_grad():
        theirs.weight_ih.copy_(ours.U)
        theirs.weight_hh.copy_(ours.W)
        if isinstance(ours, ElmanCell):
            theirs.bias_ih.copy_(ours.b)
            theirs.bias_hh.zero_()
        else:
            theirs.bias_ih.copy_(ours.b_U)
            theirs.bias_hh.copy_(ours.b_W)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_matches_rnncell(nonlinearity):
    torch.manual_seed(0)
    ours = ElmanCell(E, H, nonlinearity=nonlinearity).double()
    theirs = nn.RNNCell(E, H, nonlinearity=nonlinearity).double()
    _copy_into_torch(ours, theirs)
    x, s = torch.randn(B, E, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    h, state = ours(x, s)
    assert state is h
    torch.testing.assert_close(h, theirs(x, s), atol=1e-10, rtol=0)


def test_elman_uses_the_seeds_symbols():
    cell = ElmanCell(E, H)
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == {"U": (H, E), "W": (H, H), "b": (H,)}
    x, s = torch.randn(B, E), torch.randn(B, H)
    # S_t = tanh(U x_t + W S_{t-1} + b)
    torch.testing.assert_close(cell(x, s)[0], torch.tanh(x @ cell.U.T + s @ cell.W.T + cell.b))
    assert "_zero_bias" not in cell.state_dict()
    assert [n for n, _ in ElmanCell(E, H, bias=False).named_parameters()] == ["U", "W"]


def test_lstm_matches_lstmcell():
    torch.manual_seed(1)
    ours = LSTMCell(E, H).double()
    theirs = nn.LSTMCell(E, H).double()
    _copy_into_torch(ours, theirs)
    x = torch.randn(B, E, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    h, (h1, c1) = ours(x, (h0, c0))
    th, tc = theirs(x, (h0, c0))
    torch.testing.assert_close(h, th, atol=1e-10, rtol=0)
    torch.testing.assert_close(h1, th, atol=1e-10, rtol=0)
    torch.testing.assert_close(c1, tc, atol=1e-10, rtol=0)


def test_gru_matches_grucell():
    torch.manual_seed(2)
    ours = GRUCell(E, H).double()
    theirs = nn.GRUCell(E, H).double()
    _copy_into_torch(ours, theirs)
    x, s = torch.randn(B, E, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    torch.testing.assert_close(ours(x, s)[0], theirs(x, s), atol=1e-10, rtol=0)


def test_lstm_forget_bias_initialisation():
    cell = LSTMCell(E, H, forget_bias=1.0)
    assert torch.all(cell.b_U[H : 2 * H] == 1.0) and torch.all(cell.b_W[H : 2 * H] == 0.0)
    # the other gates keep PyTorch's uniform initialisation
    assert cell.b_U[:H].abs().max() <= 1 / H**0.5
    plain = LSTMCell(E, H, forget_bias=None)
    assert plain.b_U[H : 2 * H].abs().max() <= 1 / H**0.5


@pytest.mark.parametrize("name", list(CELLS))
def test_registry_and_init_state(name):
    cell = make_cell(name, E, H).double()
    state = cell.init_state(3)
    parts = state if isinstance(state, tuple) else (state,)
    assert all(p.shape == (3, H) and p.dtype == torch.float64 and not p.any() for p in parts)
    h, _ = cell(torch.randn(3, E, dtype=torch.float64), state)
    assert h.shape == (3, H)


def test_cell_bad_input():
    with pytest.raises(ValueError, match="cell 'rnn' is unknown"):
        make_cell("rnn", E, H)
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'"):
        ElmanCell(E, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        GRUCell(E, 0)
    cell = LSTMCell(E, H)
    with pytest.raises(ValueError, match=r"expects x_t of shape \(B, 5\), got \(4, 6\)"):
        cell(torch.randn(B, E + 1), cell.init_state(B))
    with pytest.raises(TypeError, match=r"expects a state of \(h, c\)"):
        cell(torch.randn(B, E), torch.zeros(B, H))
    with pytest.raises(ValueError, match=r"expects a state of shape \(4, 7\), got \(4, 8\)"):
        ElmanCell(E, H)(torch.randn(B, E), torch.zeros(B, H + 1))
