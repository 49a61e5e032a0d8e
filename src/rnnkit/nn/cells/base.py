"""The cell protocol: one time step of a recurrent network.

A cell maps the input at time t and the previous state to the new hidden state:

    h_t, state_t = cell(x_t, state_{t-1})        x_t: (B, E)   h_t: (B, H)

`state` is h for Elman and GRU and the pair (h, c) for LSTM. A cell that PyTorch has a fused
kernel for names it (`mode`) and lists its parameters in the order the kernel takes them
(`flat_weights`: weight_ih, weight_hh, bias_ih, bias_hh), so that `Recurrent` can hand the very
same tensors to cuDNN. A cell without one (`mode = None`) runs in `Recurrent`'s step loop.

A new cell is a subclass that sets `has_cell_state` if its state is a pair, and implements
`forward`; `register_cell` makes it usable by name (see `rnnkit.nn.cells`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Union

import torch
from torch import Tensor, nn

State = Union[Tensor, tuple[Tensor, Tensor]]


class Cell(nn.Module):
    """Base class: sizes, initialisation and the state helpers shared by all cells."""

    #: the fused kernel computing this cell ("RNN_TANH", "LSTM", "GRU", ...), None for none
    mode: str | None = None
    #: whether the state is a pair (h, c) rather than h alone
    has_cell_state: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size

    def reset_parameters(self) -> None:
        # PyTorch's own initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def init_state(self, batch_size: int) -> State:
        """The zero state for a batch: h (B, H), or (h, c) for LSTM."""
        ref = next(self.parameters(), None)
        h = torch.zeros(batch_size, self.hidden_size) if ref is None else ref.new_zeros(batch_size, self.hidden_size)
        return (h, h.clone()) if self.has_cell_state else h

    def flat_weights(self) -> list[Tensor]:
        """weight_ih, weight_hh, bias_ih, bias_hh: the tensors a fused kernel takes, no copies."""
        raise NotImplementedError(f"{type(self).__name__} has no fused kernel")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def _check(self, x: Tensor, state: State) -> None:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects x_t of shape (B, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        parts = state if isinstance(state, tuple) else (state,)
        if len(parts) != (2 if self.has_cell_state else 1):
            raise TypeError(
                f"{type(self).__name__} expects a state of {'(h, c)' if self.has_cell_state else 'h'}, "
                f"got {len(parts)} tensor(s)"
            )
        want = (x.shape[0], self.hidden_size)
        for p in parts:
            if tuple(p.shape) != want:
                raise ValueError(
                    f"{type(self).__name__} expects a state of shape {want}, got {tuple(p.shape)}"
                )
