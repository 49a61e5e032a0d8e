"""Diagnostics: iterated tanh, gradient flow through time, and `rnnkit gradients` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rnnkit import Recurrent
from rnnkit.diagnostics import gradient_flow, iterated_tanh, step_jacobians, vanishing_lag

DTYPE = torch.float64


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    return q


# ---------------------------------------------------------------- iterated tanh


def test_iterated_tanh_derivative_matches_autograd_of_the_composition():
    x = torch.linspace(-3, 3, 61, dtype=DTYPE, requires_grad=True)
    values, derivatives = iterated_tanh(x, 6)
    y = x
    for n in range(6):
        y = torch.tanh(y)
        (dy,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
        torch.testing.assert_close(values[n], y, rtol=0, atol=1e-14)
        torch.testing.assert_close(derivatives[n], dy, rtol=1e-12, atol=1e-14)


def test_iterated_tanh_derivative_is_the_product_of_tanh_primes():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.7, 1.5], dtype=DTYPE)
    values, derivatives = iterated_tanh(x, 4)
    # dy_4/dx = (1 - y_1^2)(1 - y_2^2)(1 - y_3^2)(1 - y_4^2)
    torch.testing.assert_close(derivatives[3], (1 - values**2).prod(dim=0), rtol=1e-13, atol=0)
    assert torch.all(derivatives[0] == 1 - torch.tanh(x) ** 2)
    # flatter with every application, except at x = 0 where tanh' = 1
    assert torch.all(derivatives[1:, x != 0] < derivatives[:-1, x != 0])
    assert torch.all(derivatives[:, 2] == 1)


def test_iterated_tanh_decays_like_n_to_the_minus_three_halves():
    _, derivatives = iterated_tanh(torch.tensor([1.0], dtype=DTYPE), 4000)
    slope = math.log(derivatives[3999, 0] / derivatives[1999, 0]) / math.log(2)
    assert slope == pytest.approx(-1.5, abs=0.05)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_iterated_tanh_rejects_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        iterated_tanh(torch.zeros(3), n)


# ---------------------------------------------------------------- gradient flow


def _elman(H: int, rho: float, seed: int = 0, input_scale: float = 1.0) -> Recurrent:
    """An Elman layer with W = rho Q (Q orthogonal: spectral radius = ||W||_2 = rho) and b = 0."""
    torch.manual_seed(seed)
    rnn = Recurrent("elman", 3, H).to(DTYPE)
    with torch.no_grad():
        rnn.cells[0].W.copy_(rho * _orthogonal(H, seed))
        rnn.cells[0].U.mul_(input_scale)
        rnn.cells[0].b.zero_()
    return rnn


def test_elman_gradient_is_bounded_by_rho_to_the_lag():
    rho, T = 0.8, 40
    rnn = _elman(16, rho, input_scale=1e-3)
    x = torch.randn(T, 5, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    flow = gradient_flow(rnn, x)
    bound = rho ** np.arange(T)
    ratio = flow.ratios()[0]
    assert np.all(ratio <= bound * (1 + 1e-9))
    # small inputs keep tanh' near 1, so the bound is nearly reached
    assert np.all(ratio >= 0.99 * bound)
    assert flow.spectral_radius[0] == pytest.approx(rho, rel=1e-10)
    assert flow.spectral_norm[0] == pytest.approx(rho, rel=1e-10)
    assert np.all(flow.jacobian_norms <= rho * (1 + 1e-12))
    assert flow.vanishing_lag() == 31  # the first k with 0.8^k < 1e-3


def test_elman_gradient_matches_backpropagation_by_hand():
    # dL/dS_{t-1} = W^T (diag(1 - S_t^2) dL/dS_t), with dL/dS_T = 1 for L = sum(S_T)
    T, H = 12, 5
    torch.manual_seed(0)
    rnn = Recurrent("elman", 2, H).to(DTYPE)
    x = torch.randn(T, 3, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    flow = gradient_flow(rnn, x)
    cell = rnn.cells[0]
    with torch.no_grad():
        S, s = [], torch.zeros(3, H, dtype=DTYPE)
        for t in range(T):
            s = torch.tanh(x[t] @ cell.U.T + s @ cell.W.T + cell.b)
            S.append(s)
        g, norms, jac = torch.ones(3, H, dtype=DTYPE), [], []
        for t in range(T - 1, -1, -1):
            norms.append(g.norm(dim=1).mean().item())
            J = (1 - S[t] ** 2)[:, :, None] * cell.W  # (B, H, H): diag(1 - S_t^2) W
            jac.append(torch.linalg.matrix_norm(J, ord=2).mean().item())
            g = ((1 - S[t] ** 2) * g) @ cell.W
    np.testing.assert_allclose(flow.grad_norms[0], norms, rtol=1e-10)
    np.testing.assert_allclose(flow.jacobian_norms[0], jac, rtol=1e-10)


def test_lstm_with_a_saturated_open_forget_gate_carries_the_gradient():
    T, H = 60, 8
    torch.manual_seed(0)
    rnn = Recurrent("lstm", 3, H).to(DTYPE)
    with torch.no_grad():
        cell = rnn.cells[0]
        cell.W.mul_(0.1)
        cell.b_U[H : 2 * H].fill_(20.0)  # f = sigmoid(20) = 1 - 2e-9
    x = torch.randn(T, 4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    flow = gradient_flow(rnn, x)
    ratio = flow.ratios()[0]
    assert flow.vanishing_lag() is None
    # past lag 0 (where dL/dh_T itself counts) only the cell state carries the gradient: dc_t/dc_{t-1}
    # = f_t = 1, so it hardly decays over 58 more steps
    assert ratio[-1] > 0.5 * ratio[1] > 0.01
    assert flow.spectral_radius is None
    # the same LSTM with the gate shut forgets within a few steps
    with torch.no_grad():
        cell.b_U[H : 2 * H].fill_(-20.0)
    assert gradient_flow(rnn, x, jacobian_batch=0).vanishing_lag() < 10


def test_gradient_flow_shapes_for_layers_directions_and_batch_first():
    rnn = Recurrent("gru", 3, 4, num_layers=2, bidirectional=True, batch_first=True, dropout=0.5).to(DTYPE)
    x = torch.randn(2, 7, 3, dtype=DTYPE)  # (B, T, E)
    flow = gradient_flow(rnn, x, loss_fn=lambda y: (y**2).mean(), jacobian_batch=1)
    assert flow.grad_norms.shape == flow.jacobian_norms.shape == (4, 7)
    assert flow.cell == "gru" and flow.steps == 7
    # a backward direction reads the last step first: the last output feels only that state
    assert np.all(flow.grad_norms[3, 1:] == 0) and flow.grad_norms[3, 0] > 0
    assert np.all(flow.grad_norms[2, 1:] > 0)
    assert rnn.training  # eval mode was only borrowed


def test_gradient_flow_runs_a_fused_model_through_the_reference_loop():
    rnn = Recurrent("lstm", 2, 3, num_layers=2, backend="fused").to(DTYPE)
    x = torch.randn(5, 2, 2, dtype=DTYPE)
    flow = gradient_flow(rnn, x, jacobian_batch=0)
    assert rnn.backend == "fused"
    assert flow.jacobian_norms is None and flow.grad_norms.shape == (2, 5)
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(rnn, x, loss_fn=lambda y: y)
    with pytest.raises(ValueError, match="jacobian_batch"):
        gradient_flow(rnn, x, jacobian_batch=-1)


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_step_jacobians_match_torch_autograd(cell):
    rnn = Recurrent(cell, 2, 3).to(DTYPE)
    c = rnn.cells[0]
    x = torch.randn(2, 2, dtype=DTYPE)
    h = torch.randn(2, 3, dtype=DTYPE)
    prev = (h, torch.randn(2, 3, dtype=DTYPE)) if cell == "lstm" else h
    J = step_jacobians(c, x, prev)
    for b in range(2):
        def f(s, b=b):
            state = (s[None, :3], s[None, 3:]) if cell == "lstm" else s[None]
            _, new = c(x[b : b + 1], state)
            return (torch.cat(new, -1) if cell == "lstm" else new)[0]

        s = torch.cat(prev, -1)[b] if cell == "lstm" else prev[b]
        torch.testing.assert_close(J[b], torch.autograd.functional.jacobian(f, s), rtol=1e-12, atol=1e-14)


def test_vanishing_lag():
    assert vanishing_lag([1.0, 0.1, 1e-3, 9e-4, 1.0]) == 3
    assert vanishing_lag(np.array([2.0, 1.0, 0.5])) is None
    assert vanishing_lag([2.0, 0.5, 0.1], ratio=0.1) == 2


# ---------------------------------------------------------------- rnnkit gradients


def test_gradients_command_end_to_end(cli, tmp_path, capsys):
    out = tmp_path / "g"
    rc = cli(["gradients", "--hidden", "4", "--steps", "6", "--batch", "2", "--train-steps", "2",
              "--tanh-depth", "3", "--jacobian-batch", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for cell in ("elman", "lstm", "gru"):
        assert f"{cell}: trained 2 steps" in printed
    assert "rho(W)" in printed
    for name in ("iterated_tanh.png", "iterated_tanh.csv", "gradient_flow.png", "gradient_flow.csv"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "gradient_flow.json").read_text())
    assert set(data["flows"]) == {"elman", "lstm", "gru"}
    assert set(data["flows"]["lstm"]) == {"init", "trained"}
    assert len(data["flows"]["gru"]["init"]["grad_norms"][0]) == 6
    header = (out / "iterated_tanh.csv").read_text().splitlines()[0]
    assert header.startswith("x,tanh^1,tanh^2,tanh^3,d tanh^1/dx")
    assert not list(out.glob(".*"))  # no temp files left behind


def test_gradients_command_at_initialisation_only(cli, tmp_path, capsys):
    rc = cli(["gradients", "--cells", "lstm", "--hidden", "3", "--steps", "4", "--batch", "1",
              "--layers", "2", "--jacobian-batch", "0", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layer 1" in printed and "trained" not in printed
    data = json.loads((tmp_path / "gradient_flow.json").read_text())
    assert list(data["flows"]["lstm"]) == ["init"]
    assert data["flows"]["lstm"]["init"]["jacobian_norms"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cells", "elman,transformer"], "unknown cell 'transformer'"),
        (["--cells", ","], "at least one"),
        (["--cells", "gru,gru"], "twice"),
        (["--hidden", "0"], "--hidden must be at least 1"),
        (["--steps", "1"], "--steps must be at least 2"),
        (["--train-steps", "-1"], "--train-steps must be at least 0"),
        (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        (["--device", "nonsense"], "--device 'nonsense'"),
    ],
)
def test_gradients_command_bad_input(cli, tmp_path, capsys, args, message):
    rc = cli(["gradients", "--out", str(tmp_path / "g"), *args])
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_gradients_command_out_is_a_file(cli, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc = cli(["gradients", "--steps", "3", "--hidden", "2", "--out", str(target)])
    assert rc == 1
    assert "not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
