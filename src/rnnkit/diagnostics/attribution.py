"""Which earlier words drove a prediction: attribution of the target's log-odds to the prompt's tokens.

The score is the log-odds of the target against the rest, s = log p(target) - log(1 - p(target)):
unlike log p, it does not flatten as p nears 1, so a confident prediction still has gradients.
Two measures, each a value per prompt token:

- occlusion: s(prompt) - E_w[s(prompt with w in the token's place)], the log-odds lost when the
  token is replaced by the words the model itself expected there instead (its `alternatives` most
  probable other tokens at that position, weighted by their probability; Zintgraf et al. 2017's
  prediction difference). Unlike leaving the word out, this keeps the sentence well formed, so a
  word scores high only when *which* word it is matters;
- gradient x input: sum_k e_ik ds/de_ik over the token's embedding e_i, the first-order estimate of
  the same loss when the embedding is set to zero.

With `candidates` (e.g. the devices of the household corpus), p is renormalised over them, so that
the scores say which words decided *which* candidate, not that a candidate comes next at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import RnnkitError
from ..apps.lm.model import RNNLanguageModel, require_eval
from ..data import Tokenizer


@dataclass(frozen=True)
class Attribution:
    tokens: list[str]  # the prompt's tokens, as the model reads them
    target: str
    prob: float  # p(target | prompt), over `candidates` when given
    occlusion: list[float]
    gradient_x_input: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _target_ids(tokenizer: Tokenizer, target: str, candidates: Sequence[str] | None) -> tuple[int, Tensor | None]:
    """The target's index (into the vocabulary, or into `candidates`) and the candidates' ids;
    a word outside the vocabulary is an RnnkitError from `tokenizer.id`."""
    if candidates is None:
        return tokenizer.id(target), None
    if target not in candidates:
        raise RnnkitError(f"the target {target!r} is not among the candidates")
    ids = torch.tensor([tokenizer.id(c) for c in candidates])
    return int((ids == tokenizer.id(target)).nonzero()[0]), ids


def _log_odds(logits: Tensor, target: int, candidates: Tensor | None) -> Tensor:
    """log p(target) - log(1 - p(target)) = o_target - logsumexp(o_others), from logits o (..., V)
    restricted to `candidates` when given."""
    if candidates is not None:
        logits = logits[..., candidates.to(logits.device)]
    logits = logits.double()
    others = logits.clone()
    others[..., target] = -torch.inf
    return logits[..., target] - others.logsumexp(-1)


def attribute(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    target: str,
    candidates: Sequence[str] | None = None,
    alternatives: int = 10,
) -> Attribution:
    """Occlusion and gradient x input scores of each prompt token for predicting `target` next,
    by a model in eval mode."""
    require_eval(model)
    target_id, cands = _target_ids(tokenizer, target, candidates)
    ids = tokenizer.encode_prompt(prompt)
    if len(ids) < 2:
        raise RnnkitError("the prompt is empty: there is nothing to attribute")
    device = next(model.parameters()).device
    x = torch.tensor(ids, device=device)[:, None]  # (T, 1); x[0] is the line end the prompt starts after
    T = len(ids)

    # occlusion: (T - 1) * K prompts, token i replaced by each of the K alternatives, one batch
    if alternatives < 1:
        raise RnnkitError(f"alternatives must be at least 1, got {alternatives}")
    K = min(alternatives, model.config.vocab_size - 1)
    rows = torch.arange(T - 1, device=device)
    with torch.no_grad():
        logits, _ = model(x, model.start_state(1))  # (T, 1, V)
        base = _log_odds(logits[-1, 0], target_id, cands)
        p = logits[:-1, 0].float().softmax(-1)  # (T - 1, V): p(token i | tokens before it), i = 1 .. T-1
        p[rows, x[1:, 0]] = 0  # other tokens than the one there
        q, words = p.topk(K, dim=-1)  # (T - 1, K)
        q = q / q.sum(-1, keepdim=True)
        variants = x[:, 0].repeat(T - 1, K, 1)  # (T - 1, K, T)
        variants[rows[:, None], torch.arange(K, device=device), rows[:, None] + 1] = words
        # the output layer on the last step only: (T - 1) K rows of V logits, not T times as many
        logits, _ = model(variants.view(-1, T).T, model.start_state((T - 1) * K), last_only=True)  # ((T - 1) K, V)
        occlusion = base - (q * _log_odds(logits, target_id, cands).view(T - 1, K)).sum(-1)  # (T - 1,)

    # gradient x input; cuDNN computes RNN gradients in training mode only, so use the native kernels
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        inputs = model.embed(x).detach().requires_grad_()  # (T, 1, E)
        logits, _ = model.forward_embedded(inputs, model.start_state(1), last_only=True)  # (1, V)
        (grad,) = torch.autograd.grad(_log_odds(logits[0], target_id, cands), inputs)
    saliency = (grad * inputs.detach()).sum(-1)[1:, 0]  # (T - 1,)

    return Attribution(
        tokens=[tokenizer.token(i) for i in ids[1:]], target=target, prob=float(base.sigmoid()),
        occlusion=occlusion.tolist(), gradient_x_input=saliency.tolist(),
    )
