"""The vanilla (Elman) recurrent cell, in the seed's symbols."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Cell

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class ElmanCell(Cell):
    r"""One step of the Elman network:

        S_t = F(U x_t + W S_{t-1} + b)

    with F = tanh or relu. The output O_t = V S_t + c lives in the model's head, not here.

    Arguments:
        input_size: E, the size of x_t.
        hidden_size: H, the size of the hidden state S_t.
        nonlinearity: "tanh" or "relu".
        bias: whether to learn b.

    Parameters: U (H, E), W (H, H), b (H,).
    """

    def __init__(
        self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True
    ) -> None:
        super().__init__(input_size, hidden_size)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"unknown nonlinearity {nonlinearity!r}: expected one of {sorted(NONLINEARITIES)}"
            )
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.U = nn.Parameter(torch.empty(hidden_size, input_size))
        self.W = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b = nn.Parameter(torch.empty(hidden_size)) if bias else None
        # The fused kernels take two biases (b_ih + b_hh); the seed has one, so b_hh is a fixed
        # zero that travels with the module (and into cuDNN's flat buffer) but is never saved.
        self.register_buffer("_zero_bias", torch.zeros(hidden_size) if bias else None, persistent=False)
        self.reset_parameters()

    @property
    def bias(self) -> bool:
        return self.b is not None

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x, state)
        pre = x @ self.U.T + state @ self.W.T
        if self.b is not None:
            pre = pre + self.b
        h = NONLINEARITIES[self.nonlinearity](pre)
        return h, h

    def flat_weights(self) -> list[Tensor]:
        return [self.U, self.W, self.b, self._zero_bias] if self.bias else [self.U, self.W]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}, bias={self.bias}"
