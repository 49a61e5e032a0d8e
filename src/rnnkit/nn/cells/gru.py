"""Gated recurrent unit (Cho et al. 2014), as PyTorch computes it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Cell


class GRUCell(Cell):
    r"""One step of the GRU, in PyTorch's gate order (r, z, n):

        r_t = sigmoid(U_r x_t + b_Ur + W_r h_{t-1} + b_Wr)          reset gate
        z_t = sigmoid(U_z x_t + b_Uz + W_z h_{t-1} + b_Wz)          update gate
        n_t = tanh(U_n x_t + b_Un + r_t * (W_n h_{t-1} + b_Wn))     candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Arguments:
        input_size: E.  hidden_size: H.  bias: whether to learn b_U and b_W.

    Parameters: U (3H, E), W (3H, H), b_U (3H,), b_W (3H,): equal to torch.nn.GRUCell's
    weight_ih, weight_hh, bias_ih, bias_hh (b_Wn sits inside the reset gate, so the two
    biases cannot be merged).
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.U = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.W = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.b_U = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.b_W = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.reset_parameters()

    @property
    def bias(self) -> bool:
        return self.b_U is not None

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x, state)
        gx = x @ self.U.T  # (B, 3H)
        gh = state @ self.W.T  # (B, 3H)
        if self.b_U is not None:
            gx = gx + self.b_U
            gh = gh + self.b_W
        rx, zx, nx = gx.chunk(3, dim=1)
        rh, zh, nh = gh.chunk(3, dim=1)
        r = torch.sigmoid(rx + rh)
        z = torch.sigmoid(zx + zh)
        n = torch.tanh(nx + r * nh)
        h = (1 - z) * n + z * state
        return h, h

    def flat_weights(self) -> list[Tensor]:
        return [self.U, self.W, self.b_U, self.b_W] if self.bias else [self.U, self.W]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}"
