"""Minimal gated cells whose gates read x_t alone: minGRU and minLSTM (Feng et al. 2024, "Were
RNNs All We Needed?", sections 3.1 and 3.2).

Without h_{t-1} in the gates, a step is h_t = a_t * h_{t-1} + b_t with a_t, b_t computed from x_t:
a linear recurrence that `rnnkit.nn.scan.linear_scan` computes for all T steps at once, after one
matrix product for the whole sequence. Generation still runs one step at a time (`forward`),
with a state of H numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..scan import linear_scan
from .base import Cell


class ScanCell(Cell):
    """A cell whose step is h_t = a_t * h_{t-1} + b_t, with (a_t, b_t) = `coefficients(x_t)`:
    `forward` takes one step, `scan` a whole sequence. Parameters: U (k H, E) and b (k H,), the one
    linear map from x_t to the k gate and candidate pre-activations."""

    parts: int  # k: how many H-blocks U has

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.U = nn.Parameter(torch.empty(self.parts * hidden_size, input_size))
        self.b = nn.Parameter(torch.empty(self.parts * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn.Linear's: U(-1/sqrt(E), 1/sqrt(E)); it reads x_t, not h
        bound = 1.0 / math.sqrt(self.input_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b), each (..., H), from x (..., E)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x, state)
        a, b = self.coefficients(x)
        h = torch.addcmul(b, a, state)  # h_t = a_t h_{t-1} + b_t
        return h, h

    def scan(self, x: Tensor, h0: Tensor, valid: Tensor | None = None) -> Tensor:
        """Every h_t for x (T, B, E) from h0 (B, H): (T, B, H). With valid (T, B, 1), a step outside
        its sequence holds the state (a = 1, b = 0)."""
        a, b = self.coefficients(x)  # (T, B, H) each
        if valid is not None:
            a, b = a.masked_fill(~valid, 1.0), b.masked_fill(~valid, 0.0)
        return linear_scan(a, b, h0)


class MinGRUCell(ScanCell):
    r"""minGRU (Feng et al. 2024, section 3.1): the GRU without the reset gate and with its gate
    and candidate read from x_t alone:

        z_t  = sigmoid(U_z x_t + b_z)            update gate
        h~_t = U_h x_t + b_h                     candidate
        h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

    1 - z_t is computed as sigmoid(-(U_z x_t + b_z)), exact where z_t is near 1.
    Parameters: U (2H, E) = [U_z; U_h], b (2H,) = [b_z; b_h].
    """

    parts = 2

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, candidate = F.linear(x, self.U, self.b).chunk(2, dim=-1)
        return torch.sigmoid(-k), torch.sigmoid(k) * candidate


class MinLSTMCell(ScanCell):
    r"""minLSTM (Feng et al. 2024, section 3.2): the LSTM without the output gate and the tanh,
    its gates read from x_t alone and normalised so that they sum to 1:

        f_t = sigmoid(U_f x_t + b_f),  i_t = sigmoid(U_i x_t + b_i),  h~_t = U_h x_t + b_h
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
        h_t  = f'_t * h_{t-1} + i'_t * h~_t

    f'_t is computed as sigmoid(log f_t - log i_t) = sigmoid(softplus(-u_i) - softplus(-u_f)),
    which stays finite where both gates underflow to 0 in float32 (f / (f + i) would be 0 / 0).
    Parameters: U (3H, E) = [U_f; U_i; U_h], b (3H,).
    """

    parts = 3

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, i, candidate = F.linear(x, self.U, self.b).chunk(3, dim=-1)
        log_ratio = F.softplus(-i) - F.softplus(-f)  # log f_t - log i_t
        return torch.sigmoid(log_ratio), torch.sigmoid(-log_ratio) * candidate
