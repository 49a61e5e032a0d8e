"""Which earlier words drove a prediction: attribution of the target's log-odds to the prompt's tokens.

The score is the log-odds of the target against the rest, s = log p(target) - log(1 - p(target)):
unlike log p, it does not flatten as p nears 1, so a confident prediction still has gradients.
Three measures, each a value per prompt token:

- occlusion: s(prompt) - E_w[s(prompt with w in the token's place)], the log-odds lost when the
  token is replaced by the words the model itself expected there instead (its `alternatives` most
  probable other tokens at that position, weighted by their probability; Zintgraf et al. 2017's
  prediction difference). Unlike leaving the word out, this keeps the sentence well formed, so a
  word scores high only when *which* word it is matters;
- integrated gradients (Sundararajan et al. 2017, Captum's `LayerIntegratedGradients` on the
  embedding): sum_k (e_ik - e'_ik) * integral_0^1 ds/de_ik(e' + a (e - e')) da, averaged over
  `baselines` reference prompts e', each drawing every word from the same alternatives occlusion
  weighs (expected gradients, Erion et al. 2021). A single all-zero or all-<unk> reference is out of
  the data's reach, and the path from it credits the sentence's frame ("and turned on the") as much
  as its object. The scores add up to s(prompt) - mean s(reference) (completeness), up to the
  quadrature's error, `ig_delta`;
- gradient x input: sum_k e_ik ds/de_ik over the token's embedding e_i, the first-order estimate of
  the loss when the embedding is set to zero: integrated gradients' one-step, zero-baseline cousin,
  which a saturated network fools (the gradient at e says little about the path from 0 to e).

With `candidates` (e.g. the devices of the household corpus), p is renormalised over them, so that
the scores say which words decided *which* candidate, not that a candidate comes next at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from ..errors import RnnkitError
from ..apps.lm.model import RNNLanguageModel, require_eval
from ..data import Tokenizer


@dataclass(frozen=True)
class Attribution:
    tokens: list[str]  # the prompt's tokens, as the model reads them
    target: str
    prob: float  # p(target | prompt), over `candidates` when given
    occlusion: list[float]
    integrated_gradients: list[float]
    ig_delta: float  # sum(integrated_gradients) - (s(prompt) - mean s(reference)): the quadrature's error
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
    baselines: int = 8,
    steps: int = 50,
    seed: int = 0,
) -> Attribution:
    """Occlusion, integrated gradients (`baselines` references drawn with `seed`, each path
    integrated by `steps` points of Gauss-Legendre quadrature) and gradient x input scores of each
    prompt token for predicting `target` next, by a model in eval mode. The model is only read: it
    may serve other threads meanwhile."""
    require_eval(model)
    target_id, cands = _target_ids(tokenizer, target, candidates)
    ids = tokenizer.encode_prompt(prompt)
    if len(ids) < 2:
        raise RnnkitError("the prompt is empty: there is nothing to attribute")
    device = next(model.parameters()).device
    x = torch.tensor(ids, device=device)[:, None]  # (T, 1); x[0] is the line end the prompt starts after
    T = len(ids)

    # occlusion: (T - 1) * K prompts, token i replaced by each of the K alternatives, one batch
    for name, value in (("alternatives", alternatives), ("baselines", baselines), ("steps", steps)):
        if value < 1:
            raise RnnkitError(f"{name} must be at least 1, got {value}")
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
    generator = torch.Generator(device=device).manual_seed(seed)
    references = x[:, 0].repeat(baselines, 1)  # (N, T): word i drawn from the alternatives at i
    references[:, 1:] = words.gather(1, torch.multinomial(q, baselines, True, generator=generator)).T
    integrated, delta = _integrated_gradients(model, x, references, target_id, cands, steps)

    return Attribution(
        tokens=[tokenizer.token(i) for i in ids[1:]], target=target, prob=float(base.sigmoid()),
        occlusion=occlusion.tolist(), integrated_gradients=integrated.tolist(), ig_delta=delta,
        gradient_x_input=saliency.tolist(),
    )


class _Lookup(nn.Module):
    """The model's embedding lookup as a module of one attribution's own: Captum hooks this one,
    so the shared model gets no hook that another thread's forward pass would run into."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight.detach()

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight)


def _integrated_gradients(
    model: RNNLanguageModel, x: Tensor, references: Tensor, target: int, candidates: Tensor | None, steps: int
) -> tuple[Tensor, float]:
    """Integrated gradients of the log-odds over the embeddings of the prompt x (T, 1), averaged
    over the paths from each of the references (N, T): the scores (T - 1,) (x[0], the line end
    the prompt starts after, is in every reference too) and their completeness error."""
    lookup = _Lookup(model.embedding.weight)

    def log_odds(ids: Tensor) -> Tensor:  # ids (M, T), batch first, as Captum expands them
        embedded = lookup(ids).transpose(0, 1)  # (T, M, E)
        logits, _ = model.forward_embedded(embedded, model.start_state(ids.shape[0]), last_only=True)  # (M, V)
        return _log_odds(logits, target, candidates)

    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        scores, delta = LayerIntegratedGradients(log_odds, lookup).attribute(
            x.T.expand_as(references), references, n_steps=steps, return_convergence_delta=True)  # (N, T, E)
    return scores.sum(-1).mean(0)[1:].detach().double(), float(delta.mean())  # (T - 1,)
