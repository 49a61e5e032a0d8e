"""Soft attention: a query looks over a memory of vectors and reads their weighted mean.

    e_j = score(q, m_j)            one number per memory vector j = 1 .. S
    a_j = softmax_j(e_j)           0 on padding: the masked scores are -inf
    c   = sum_j a_j m_j            the context vector

with the scores of Bahdanau et al. 2015 (additive, section 3.1 and appendix A.1.2) and Luong et
al. 2015 (section 3.1):

    additive ("bahdanau")   e_j = v^T tanh(W_q q + W_m m_j)
    general                 e_j = q^T W_a m_j
    dot                     e_j = q^T m_j            (needs q and m_j of one size)

Whatever depends on the memory alone (W_m m_j, W_a m_j) is computed once per sentence (`keys`)
and reused at every decoder step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCORES = ("bahdanau", "general", "dot")


class Attention(nn.Module):
    """Arguments: score: "bahdanau", "general" or "dot". query_size: Q. memory_size: M.
    attention_size: A, the additive score's hidden size (default Q).

    keys(memory (B, S, M)) -> keys; forward(query (B, Q), keys, memory (B, S, M), mask (B, S))
    -> (context (B, M), weights (B, S)), where mask is True on real positions.
    """

    def __init__(self, score: str, query_size: int, memory_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown attention score {score!r}: expected one of {', '.join(SCORES)}")
        if score == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs query and memory of one size, got {query_size} and {memory_size}")
        self.score = score
        if score == "bahdanau":
            A = attention_size or query_size
            self.W_q = nn.Linear(query_size, A, bias=False)
            self.W_m = nn.Linear(memory_size, A)
            self.v = nn.Linear(A, 1, bias=False)
        elif score == "general":
            self.W_a = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """What the scores need of the memory, once per sentence: (B, S, A), (B, S, Q) or the memory."""
        if self.score == "bahdanau":
            return self.W_m(memory)
        if self.score == "general":
            return self.W_a(memory)
        return memory

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.score == "bahdanau":
            scores = self.v(torch.tanh(keys + self.W_q(query)[:, None])).squeeze(-1)  # (B, S)
        else:
            scores = torch.bmm(keys, query[:, :, None]).squeeze(-1)  # (B, S)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, S)
        return torch.bmm(weights[:, None], memory).squeeze(1), weights  # (B, M), (B, S)
