"""Sampling: draw each next token from the model's distribution, or take the likeliest (greedy)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from ..configs import check_positive_integer
from ..errors import ParameterError

_TINY = torch.finfo(torch.float32).tiny


class StepModel(Protocol):
    """What decoding needs of a model (see the package's docstring)."""

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...

    def reorder_state(self, state: Any, index: Tensor) -> Any: ...


def check_sampling(length: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ParameterError for settings `sample` cannot honour."""
    check_positive_integer("length", length)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ParameterError("temperature", f"must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None:
        check_positive_integer("top_k", top_k)
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ParameterError("top_p", f"must be in (0, 1], got {top_p!r}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Keep, in each row of logits (..., V), the top_k tokens and the smallest set of the likeliest
    whose probability reaches top_p (nucleus sampling, Holtzman et al. 2020); the rest get -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p >= top_p  # tokens after the mass is reached
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits


def draw(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token from each row of weights (N, V) >= 0, not necessarily normalised: the first whose
    cumulative weight passes u * total, u uniform, i.e. P(i) = w_i / sum(w), as torch.multinomial
    draws, at a twentieth of its cost for V = 10,000 (13 against 224 us); a token of weight 0 is never
    drawn (strictly greater)."""
    cdf = weights.cumsum(-1)  # (N, V)
    u = torch.rand(weights.shape[0], 1, dtype=cdf.dtype, device=cdf.device, generator=generator).mul_(cdf[:, -1:])
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=weights.shape[1] - 1)  # (N,)


@torch.no_grad()
def sample(
    model: StepModel,
    log_probs: Tensor,
    state: Any,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Iterator[Tensor]:
    """Yield the next token of each of N sequences, (N,), `length` times, starting from the
    log-probabilities (N, V) and the state the context left.

    temperature 0 is greedy decoding; otherwise a token is drawn from softmax(log_probs /
    temperature) restricted by top_k and top_p. With `eos_id`, a sequence that has written it
    writes it again at every later step, and the iteration stops once every sequence has.
    """
    check_sampling(length, temperature, top_k, top_p)
    finished = None if eos_id is None else torch.zeros(log_probs.shape[0], dtype=torch.bool, device=log_probs.device)
    for t in range(length):
        if temperature == 0:
            tokens = log_probs.argmax(-1)
        else:
            # shifted so the likeliest is 0: any positive temperature, however small, stays finite
            # (one below float32's smallest normal number reads as that: greedy, as any so small);
            # exp of it is softmax unnormalised, which `draw` takes as it is
            logits = log_probs.float()
            logits = (logits - logits.amax(-1, keepdim=True)).div_(max(temperature, _TINY))
            tokens = draw(filter_logits(logits, top_k, top_p).exp_(), generator)
        if finished is not None:
            tokens = tokens.masked_fill(finished, eos_id)
            finished |= tokens == eos_id
        yield tokens
        if t == length - 1 or (finished is not None and bool(finished.all())):
            return
        log_probs, state = model.step(tokens, state)
