"""Iterated tanh: the seed's picture of why gradients vanish through time.

Apply tanh n times, y_j = tanh(y_{j-1}) with y_0 = x. By the chain rule

    dy_n/dx = prod_{j=1..n} tanh'(y_{j-1}) = prod_{j=1..n} (1 - y_j^2)

a product of n factors that are all below 1 except at x = 0, just as backpropagation through
time multiplies one step Jacobian per step. Each factor tends to 1 as y_j -> 0, so alone the
product decays only polynomially (y_n ~ sqrt(3 / 2n), dy_n/dx ~ n^(-3/2)); in a network the
recurrent matrix W joins each factor, and with ||W|| < 1 the decay becomes exponential.
"""

from __future__ import annotations

import torch
from torch import Tensor


def iterated_tanh(x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """tanh applied 1, 2, ..., n times to x, and the derivative of each with respect to x.

    Arguments:
        x: the inputs, any shape S.
        n: the largest number of applications, n >= 1.

    Returns (values, derivatives), each of shape (n, *S): values[j - 1] = y_j and
    derivatives[j - 1] = dy_j/dx.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    values, derivatives = [], []
    y, dy = x, torch.ones_like(x)
    for _ in range(n):
        y = torch.tanh(y)
        dy = dy * (1 - y * y)  # tanh'(u) = 1 - tanh(u)^2, with tanh(u) the new y
        values.append(y)
        derivatives.append(dy)
    return torch.stack(values), torch.stack(derivatives)
