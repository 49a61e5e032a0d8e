"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Cell


class LSTMCell(Cell):
    r"""One step of the LSTM, in PyTorch's gate order (i, f, g, o):

        i_t = sigmoid(U_i x_t + b_Ui + W_i h_{t-1} + b_Wi)      input gate
        f_t = sigmoid(U_f x_t + b_Uf + W_f h_{t-1} + b_Wf)      forget gate
        g_t = tanh(U_g x_t + b_Ug + W_g h_{t-1} + b_Wg)         candidate
        o_t = sigmoid(U_o x_t + b_Uo + W_o h_{t-1} + b_Wo)      output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    The additive path c_{t-1} -> c_t is what lets the gradient survive many steps.

    Arguments:
        input_size: E.  hidden_size: H.  bias: whether to learn b_U and b_W.
        forget_bias: value of the forget gate's bias b_Uf at initialisation (b_Wf starts at 0);
            1.0 keeps the gate open early in training (Jozefowicz et al. 2015). None keeps
            PyTorch's uniform initialisation.

    Parameters: U (4H, E), W (4H, H), b_U (4H,), b_W (4H,): equal to torch.nn.LSTMCell's
    weight_ih, weight_hh, bias_ih, bias_hh.
    """

    mode = "LSTM"
    has_cell_state = True

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = 1.0
    ) -> None:
        super().__init__(input_size, hidden_size)
        self.U = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.W = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.b_U = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.b_W = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.forget_bias = forget_bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.b_U is not None and self.forget_bias is not None:
            H = self.hidden_size
            with torch.no_grad():
                self.b_U[H : 2 * H].fill_(self.forget_bias)
                self.b_W[H : 2 * H].zero_()

    @property
    def bias(self) -> bool:
        return self.b_U is not None

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        self._check(x, state)
        h, c = state
        gates = x @ self.U.T + h @ self.W.T  # (B, 4H)
        if self.b_U is not None:
            gates = gates + self.b_U + self.b_W
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def flat_weights(self) -> list[Tensor]:
        return [self.U, self.W, self.b_U, self.b_W] if self.bias else [self.U, self.W]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}, forget_bias={self.forget_bias}"
