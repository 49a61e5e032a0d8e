"""Recurrent: fused == reference == torch.nn, gradients, state carrying, bad input."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit import Recurrent

E, H = 4, 5
TORCH = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


def _random_state(rec, B):
    return tuple(torch.randn_like(p) for p in _parts(rec.init_state(B))) if rec.has_cell_state else torch.randn_like(
        rec.init_state(B)
    )


def _run(rec, backend, x, state, lengths):
    rec.zero_grad()
    rec.backend = backend
    out, final = rec(x, state, lengths)
    # a loss that touches every output and every final state
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + sum(
        (p**2).sum() for p in _parts(final)
    )
    loss.backward()
    grads = [p.grad.clone() for p in rec.parameters()]
    return [out.detach(), *(p.detach() for p in _parts(final)), *grads]


CASES = list(itertools.product(["elman", "lstm", "gru"], [1, 2, 3], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("cell,layers,bidirectional,batch_first,with_lengths", CASES)
def test_fused_equals_reference(cell, layers, bidirectional, batch_first, with_lengths):
    torch.manual_seed(layers * 7 + bidirectional)
    rec = Recurrent(cell, E, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first).double()
    T, B = 6, 3
    x = torch.randn((B, T, E) if batch_first else (T, B, E), dtype=torch.float64)
    state = _random_state(rec, B)
    lengths = torch.tensor([6, 2, 4]) if with_lengths else None
    fused = _run(rec, "fused", x, state, lengths)
    reference = _run(rec, "reference", x, state, lengths)
    assert len(fused) == len(reference)
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("cell,layers,bidirectional", list(itertools.product(["elman", "lstm", "gru"], [1, 2], [False, True])))
def test_from_torch_matches_torch_nn(cell, layers, bidirectional):
    torch.manual_seed(3)
    module = TORCH[cell](E, H, num_layers=layers, bidirectional=bidirectional).double()
    rec = Recurrent.from_torch(module)
    x = torch.randn(7, 2, E, dtype=torch.float64)
    lengths = torch.tensor([7, 3])
    want_out, want_state = module(nn.utils.rnn.pack_padded_sequence(x, lengths))
    want_out = nn.utils.rnn.pad_packed_sequence(want_out, total_length=7)[0]
    for backend in ("fused", "reference"):
        rec.backend = backend
        out, state = rec(x, lengths=lengths)
        torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
        for a, b in zip(_parts(state), _parts(want_state)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_to_torch_round_trip(cell):
    rec = Recurrent(cell, E, H, num_layers=2, bidirectional=True, batch_first=True).double()
    module = rec.to_torch()
    assert isinstance(module, TORCH[cell]) and module.batch_first and module.bidirectional
    x = torch.randn(3, 5, E, dtype=torch.float64)
    torch.testing.assert_close(module(x)[0], rec(x)[0], atol=1e-10, rtol=0)
    back = Recurrent.from_torch(module)
    for a, b in zip(back.parameters(), rec.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="expects torch.nn.RNN, LSTM or GRU, got Linear"):
        Recurrent.from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="proj_size=2"):
        Recurrent.from_torch(nn.LSTM(3, 4, proj_size=2))


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_gradcheck_reference(cell):
    torch.manual_seed(4)
    rec = Recurrent(cell, 3, 3, num_layers=2, bidirectional=True, backend="reference").double()
    names = [n for n, _ in rec.named_parameters()]
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, *weights):
        out, state = torch.func.functional_call(rec, dict(zip(names, weights)), (x,), {"lengths": [4, 2]})
        return out, *_parts(state)

    weights = [p.detach().clone().requires_grad_() for p in rec.parameters()]
    assert torch.autograd.gradcheck(f, (x, *weights))


@pytest.mark.parametrize("cell,backend", list(itertools.product(["elman", "lstm", "gru"], ["fused", "reference"])))
def test_state_carried_over_two_windows_equals_one_pass(cell, backend):
    torch.manual_seed(5)
    rec = Recurrent(cell, E, H, num_layers=2, backend=backend).double()
    x = torch.randn(9, 3, E, dtype=torch.float64)
    whole, whole_state = rec(x)
    first, state = rec(x[:4])
    second, state = rec(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-12, rtol=0)
    for a, b in zip(_parts(state), _parts(whole_state)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_lengths_zero_outputs_and_per_sequence_final_state():
    torch.manual_seed(6)
    rec = Recurrent("gru", E, H, bidirectional=True, backend="reference").double()
    x = torch.randn(5, 2, E, dtype=torch.float64)
    out, state = rec(x, lengths=[5, 3])
    assert not out[3:, 1].any()
    # sequence 1 alone, cut to its 3 steps, gives the same final states in both directions
    alone_out, alone_state = rec(x[:3, 1:2])
    torch.testing.assert_close(state[:, 1:2], alone_state, atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:3, 1:2], alone_out, atol=1e-12, rtol=0)


def test_dropout_between_layers_only():
    rec = Recurrent("lstm", E, H, num_layers=2, dropout=0.5)
    x = torch.randn(4, 3, E)
    for backend in ("fused", "reference"):
        rec.backend = backend
        rec.eval()
        a, _ = rec(x)
        b, _ = rec(x)
        torch.testing.assert_close(a, b)  # no dropout in eval
        rec.train()
        torch.manual_seed(0)
        c, _ = rec(x)
        assert not torch.allclose(a, c)  # dropout acts in training
    single = Recurrent("gru", E, H, num_layers=1, dropout=0.5, backend="reference").train()
    torch.testing.assert_close(single(x)[0], single(x)[0])  # never after the last layer


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_trace_returns_every_state_in_the_graph(cell):
    torch.manual_seed(7)
    rec = Recurrent(cell, E, H, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 3, E, dtype=torch.float64)
    trace = rec.trace(x)
    out, state = rec(x)  # auto -> fused
    torch.testing.assert_close(trace.outputs, out, atol=1e-12, rtol=0)
    h = trace.hidden()
    assert h.shape == (5, 4, 3, H)
    # the last layer's forward h at each t is the output's first half
    torch.testing.assert_close(h[:, 2], out[..., :H], atol=1e-12, rtol=0)
    # gradients with respect to earlier states flow through the returned tensors
    loss = trace.outputs[-1].sum()
    first = trace.steps[0][0]
    grad = torch.autograd.grad(loss, first[0] if isinstance(first, tuple) else first)[0]
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="trace needs the reference loop"):
        Recurrent(cell, E, H, backend="fused").trace(x.float())


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(["elman", "lstm", "gru"]),
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    data=st.data(),
)
def test_shapes_property(cell, T, B, layers, bidirectional, batch_first, data):
    rec = Recurrent(cell, 3, 2, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first).double()
    lengths = data.draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), dtype=torch.float64)
    D = 2 if bidirectional else 1
    outs = []
    for backend in ("fused", "reference"):
        rec.backend = backend
        out, state = rec(x, lengths=lengths)
        assert out.shape == ((B, T, D * 2) if batch_first else (T, B, D * 2))
        assert all(p.shape == (layers * D, B, 2) for p in _parts(state))
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=0)


BAD = [
    (lambda r: r(torch.randn(5, 4)), ValueError, r"x must have 3 dimensions \(T, B, E\), got shape \(5, 4\)"),
    (lambda r: r(torch.randn(5, 2, 3)), ValueError, r"feature size E=4 .* got shape \(5, 2, 3\)"),
    (lambda r: r([[1.0]]), TypeError, "x must be a torch.Tensor, got list"),
    (lambda r: r(torch.randn(5, 2, 4), torch.zeros(1, 2, 5)), TypeError, r"LSTM state must be a tuple \(h, c\)"),
    (
        lambda r: r(torch.randn(5, 2, 4), (torch.zeros(1, 2, 5), torch.zeros(1, 3, 5))),
        ValueError,
        r"state must have shape \(L\*D, B, H\) = \(2, 2, 5\), got \(1, 2, 5\)",
    ),
    (lambda r: r(torch.randn(5, 2, 4), lengths=[0, 3]), ValueError, r"lengths must lie in \[1, T=5\], got values from 0 to 3"),
    (lambda r: r(torch.randn(5, 2, 4), lengths=[6, 3]), ValueError, r"lengths must lie in \[1, T=5\]"),
    (lambda r: r(torch.randn(5, 2, 4), lengths=[5]), ValueError, r"lengths must have shape \(B,\) = \(2,\), got \(1,\)"),
    (lambda r: r(torch.randn(5, 2, 4), lengths=[5.0, 2.0]), TypeError, "lengths must be integers"),
]


@pytest.mark.parametrize("call,error,message", BAD)
def test_bad_input(call, error, message):
    rec = Recurrent("lstm", 4, 5, num_layers=2)
    with pytest.raises(error, match=message):
        call(rec)


def test_bad_configuration():
    with pytest.raises(ValueError, match="cell 'transformer' is unknown"):
        Recurrent("transformer", 4, 5)
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        Recurrent("gru", 4, 5, backend="cudnn")
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        Recurrent("elman", 4, 5, nonlinearity="gelu")
    with pytest.raises(ValueError, match="num_layers must be a positive integer, got 0"):
        Recurrent("gru", 4, 5, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.5"):
        Recurrent("gru", 4, 5, dropout=1.5)


@pytest.mark.parametrize("cell,with_lengths", list(itertools.product(["elman", "lstm", "gru"], [False, True])))
def test_variational_dropout_and_weight_drop_agree_across_backends(cell, with_lengths):
    """Same random draws -> same function: the masks are drawn in the same order by both backends."""
    rec = Recurrent(cell, E, H, num_layers=3, dropout=0.4, variational=True, weight_drop=0.3).double().train()
    x = torch.randn(6, 3, E, dtype=torch.float64)
    lengths = [6, 6, 6] if with_lengths else None  # equal lengths: packing keeps the batch order
    outs = []
    for backend in ("fused", "reference"):
        rec.backend = backend
        torch.manual_seed(11)
        outs.append(_run(rec, backend, x, None, lengths))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_variational_mask_is_locked_over_time():
    ones = torch.ones(50, 4, 16)
    locked = Recurrent("elman", E, H, dropout=0.5, variational=True).train()._between_layers(ones, (1, 4, 16))
    assert (locked == locked[0]).all() and (locked[0] == 0).any()  # one mask for every step
    fresh = Recurrent("elman", E, H, dropout=0.5).train()._between_layers(ones, (1, 4, 16))
    assert not (fresh == fresh[0]).all()


def test_weight_drop_changes_W_only_in_training():
    rec = Recurrent("lstm", E, H, weight_drop=0.5)
    x = torch.randn(4, 2, E)
    rec.eval()
    torch.testing.assert_close(rec(x)[0], rec(x)[0])
    rec.train()
    torch.manual_seed(1)
    a = rec(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, rec(x)[0])
