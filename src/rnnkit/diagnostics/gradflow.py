"""Gradient flow through time: how much the loss at the last step still feels each earlier state.

For a loss L on the last output and the state s_t of one layer after step t, backpropagation
through time multiplies one step Jacobian per step:

    dL/ds_t = (ds_{t+1}/ds_t)^T ... (ds_T/ds_{T-1})^T dL/ds_T          J_t = ds_t/ds_{t-1}

so ||dL/ds_{T-k}|| <= ||dL/ds_T|| prod_j ||J_j||. For the Elman cell J_t = diag(1 - S_t^2) W, and
every factor has norm at most ||W||_2: below 1 the gradient vanishes geometrically with the lag k.
The LSTM's cell state adds the path c_{t-1} -> c_t with Jacobian diag(f_t), which keeps the
gradient alive while the forget gate stays open.

The state s_t is h_t for Elman and GRU and the pair (h_t, c_t) for LSTM: both carry memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev, vmap
from torch.nn import functional as F

from ..apps.lm.model import RNNLanguageModel
from ..data import BPTTBatches
from ..nn.cells import Cell, ElmanCell, State
from ..nn.recurrent import Recurrent, Trace
from .tasks import TASKS, TaskConfig, TaskModel, held_out

# how many Jacobian entries one vmap call may hold at once (float64: 8 bytes each)
_JACOBIAN_CHUNK = 1 << 22


@dataclass(frozen=True)
class GradientFlow:
    """What `gradient_flow` measured, indexed by layer-direction k (= layer * D + direction)
    and lag (0 is the last step, T - 1 the first).

    cell: the cell's registry name.
    grad_norms: (K, T); grad_norms[k, lag] is the mean over sequences of ||dL/ds_{T-1-lag}||.
    jacobian_norms: (K, T) or None; jacobian_norms[k, lag] is the mean over the first
        `jacobian_batch` sequences of the largest singular value of the step Jacobian ds_t/ds_{t-1} at t = T - 1 - lag
        (s_{-1} is the initial state).
    spectral_norm: (K,) largest singular value ||W||_2 of each Elman cell's W, else None.
    spectral_radius: (K,) largest |eigenvalue| of each Elman cell's W, else None.
    """

    cell: str
    grad_norms: np.ndarray
    jacobian_norms: np.ndarray | None
    spectral_norm: np.ndarray | None
    spectral_radius: np.ndarray | None

    @property
    def steps(self) -> int:
        return self.grad_norms.shape[1]

    def ratios(self) -> np.ndarray:
        """grad_norms relative to lag 0, per layer-direction: (K, T)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.grad_norms / self.grad_norms[:, :1]

    def vanishing_lag(self, k: int = -1, ratio: float = 1e-3) -> int | None:
        """The first lag at which ||dL/ds|| of layer-direction k falls below `ratio` times its
        value at lag 0, or None if it stays above within the T steps measured."""
        return vanishing_lag(self.grad_norms[k], ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for JSON."""
        def listed(a: np.ndarray | None) -> list | None:
            return None if a is None else a.tolist()

        return {
            "cell": self.cell,
            "grad_norms": listed(self.grad_norms),
            "jacobian_norms": listed(self.jacobian_norms),
            "spectral_norm": listed(self.spectral_norm),
            "spectral_radius": listed(self.spectral_radius),
            "vanishing_lag": [self.vanishing_lag(k) for k in range(len(self.grad_norms))],
        }


def vanishing_lag(norms: np.ndarray | Tensor, ratio: float = 1e-3) -> int | None:
    """The first index at which norms[lag] < ratio * norms[0]; None if there is none."""
    norms = np.asarray(norms, dtype=np.float64)
    below = np.flatnonzero(norms < ratio * norms[0])
    return int(below[0]) if below.size else None


def gradient_flow(
    rnn: Recurrent,
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    state: State | None = None,
    jacobian_batch: int | None = None,
) -> GradientFlow:
    """Measure dL/ds_t for every step t and layer of `rnn` on the input x.

    Arguments:
        rnn: any Recurrent, in any backend; it runs the reference loop in eval mode here (no
            dropout) and is left as it was found.
        x: the input sequences, (T, B, E), or (B, T, E) if rnn.batch_first. For a language
            model, the embedded tokens.
        loss_fn: maps the last output y_T, (B, D*H), to a scalar loss; None uses y_T.sum(), whose
            gradient dL/dy_T is all ones. For a language model: the cross-entropy of the head's
            logits at the last step against the next token.
        state: the initial state, as `rnn` takes it; None is zero.
        jacobian_batch: measure the step Jacobians on the first this many sequences (None: all,
            0: skip them); each costs T singular value decompositions of size |s| per layer.

    The norms are in x's dtype: in float32 anything below ~1e-38 reads as 0, so pass a float64
    copy of the model to follow a vanishing gradient over hundreds of steps.
    """
    if jacobian_batch is not None and (isinstance(jacobian_batch, bool) or jacobian_batch < 0):
        raise ValueError(f"jacobian_batch must be None or an integer >= 0, got {jacobian_batch!r}")
    with _reference_eval(rnn):
        trace = rnn.trace(x, state)
        last = trace.outputs[:, -1] if rnn.batch_first else trace.outputs[-1]  # (B, D*H)
        loss = last.sum() if loss_fn is None else loss_fn(last)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        parts = [_parts(s) for ks in trace.steps for s in ks]
        flat = [p for ps in parts for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True)
        K, T, P = len(trace.steps), len(trace.steps[0]), len(parts[0])
        g = torch.stack(grads).detach()  # (K*T*P, B, H)
        g = g.view(K, T, P, *g.shape[1:])  # (K, T, P, B, H)
        norms = g.pow(2).sum(dim=(2, 4)).sqrt().mean(dim=-1)  # (K, T), indexed by t
        jac = None
        if jacobian_batch != 0:
            xs = x.transpose(0, 1) if rnn.batch_first else x  # (T, B, E)
            with torch.no_grad():  # torch.func still differentiates inside; no graph to the weights
                jac = _jacobian_norms(rnn, xs, trace, state, jacobian_batch).flip(1)
    elman = [c for c in rnn.cells if isinstance(c, ElmanCell)]
    sn = sr = None
    if elman:
        W = torch.stack([c.W.detach() for c in elman])  # (K, H, H)
        sn = torch.linalg.matrix_norm(W, ord=2).cpu().numpy()
        sr = torch.linalg.eigvals(W).abs().amax(dim=-1).cpu().numpy()
    return GradientFlow(
        cell=rnn.cell,
        grad_norms=norms.flip(1).cpu().numpy().astype(np.float64),
        jacobian_norms=None if jac is None else jac.cpu().numpy().astype(np.float64),
        spectral_norm=sn,
        spectral_radius=sr,
    )


def step_jacobians(cell: Cell, x: Tensor, prev: State) -> Tensor:
    """ds_t/ds_{t-1} of one cell step for each sequence: (N, S, S), with s = h or cat(h, c).

    x (N, E) and prev (N, H) or a pair of them are the step's inputs; any N.
    """
    lstm = isinstance(prev, tuple)
    H = cell.hidden_size
    s = torch.cat(prev, dim=-1) if lstm else prev  # (N, S)

    def step(xb: Tensor, sb: Tensor) -> Tensor:  # one sequence: (E,), (S,) -> (S,)
        before = (sb[None, :H], sb[None, H:]) if lstm else sb[None]
        _, after = cell(xb[None], before)
        return (torch.cat(after, dim=-1) if lstm else after)[0]

    return vmap(jacrev(step, argnums=1))(x, s)


def _jacobian_norms(
    rnn: Recurrent, x: Tensor, trace: Trace, state: State | None, batch: int | None
) -> Tensor:
    """Mean over the first `batch` sequences of ||ds_t/ds_{t-1}||_2, per layer-direction: (K, T)."""
    T, B = x.shape[0], min(x.shape[1], batch or x.shape[1])
    D = rnn.num_directions
    start = rnn.init_state(x.shape[1]) if state is None else state
    steps = [[_detached(s, B) for s in ks] for ks in trace.steps]
    rows = []
    for k, cell in enumerate(rnn.cells):
        layer, direction = divmod(k, D)
        if layer == 0:
            inputs = x[:, :B]  # (T, B, E)
        else:
            below = [torch.stack([s[0] if isinstance(s, tuple) else s for s in steps[(layer - 1) * D + d]])
                     for d in range(D)]
            inputs = torch.cat(below, dim=-1)  # (T, B, D*H)
        s0 = _detached((start[0][k], start[1][k]) if isinstance(start, tuple) else start[k], B)
        # the state before step t: the one after t - 1, or after t + 1 when reading backwards
        if direction == 0:
            prevs = [s0, *steps[k][:-1]]
        else:
            prevs = [*steps[k][1:], s0]
        prev = _stack(prevs)  # (T*B, H) or a pair
        J = []
        n = max(1, _JACOBIAN_CHUNK // (_size(prev) ** 2))
        flat_x = inputs.reshape(T * B, -1)  # (T*B, E)
        for i in range(0, T * B, n):
            chunk = tuple(p[i : i + n] for p in prev) if isinstance(prev, tuple) else prev[i : i + n]
            J.append(torch.linalg.matrix_norm(step_jacobians(cell, flat_x[i : i + n], chunk), ord=2))
        rows.append(torch.cat(J).view(T, B).mean(dim=1))  # (T,)
    return torch.stack(rows)  # (K, T)


@contextmanager
def _reference_eval(rnn: Recurrent) -> Iterator[None]:
    """Run rnn through the reference loop and without dropout, then restore both settings."""
    backend, training = rnn.backend, rnn.training
    rnn.backend = "reference"
    rnn.eval()
    try:
        yield
    finally:
        rnn.backend = backend
        rnn.train(training)


def _parts(s: State) -> tuple[Tensor, ...]:
    return s if isinstance(s, tuple) else (s,)


def _detached(s: State, B: int) -> State:
    return tuple(p[:B].detach() for p in s) if isinstance(s, tuple) else s[:B].detach()


def _stack(states: list[State]) -> State:
    """T states of (B, H) (or pairs) -> (T*B, H) (or a pair), time-major like x."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat([s[i] for s in states]) for i in range(2))
    return torch.cat(states)


def _size(s: State) -> int:
    return sum(p.shape[-1] for p in _parts(s))


def adding_flow(model: TaskModel, T: int, config: TaskConfig, batch: int, jacobian_batch: int | None = None) -> GradientFlow:
    """Gradient flow of the adding problem's loss at the last step, on the first `batch` held-out
    sequences of length T, through a float64 copy of the model so that tiny norms survive."""
    m = copy.deepcopy(model).double()
    x, y = held_out(TASKS["adding"], T, config)
    device = next(m.parameters()).device
    x, y = x[:, :batch].to(device, torch.float64), y[:batch].to(device, torch.float64)  # (T, B, 2), (B,)
    return gradient_flow(
        m.rnn, x, lambda last: TASKS["adding"].loss(m.head(last)[None], y), jacobian_batch=jacobian_batch
    )


def language_model_flow(
    model: RNNLanguageModel, ids: Any, batch: int, steps: int, jacobian_batch: int | None = None
) -> GradientFlow:
    """Gradient flow of a trained language model: the cross-entropy of the next token after the
    last of `steps` tokens, against every earlier state, on the first window of `batch` streams
    of `ids`; through a float64 copy, dropout off."""
    m = copy.deepcopy(model).double()
    device = next(m.parameters()).device
    x, y = BPTTBatches(ids, batch, steps, device, name="text to measure on").window(0)  # (T, B) each
    return gradient_flow(
        m.rnn, m.embedding(x), lambda last: F.cross_entropy(m.head(last), y[-1]), jacobian_batch=jacobian_batch
    )
