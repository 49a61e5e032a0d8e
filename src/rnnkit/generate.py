"""Using a trained language model: the next-token distribution, sampling and beam search."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .cells import State
from .errors import RnnkitError
from .lm import RNNLanguageModel
from .text import Tokenizer


@dataclass(frozen=True)
class Prediction:
    token: str
    prob: float


def _device(model: RNNLanguageModel) -> torch.device:
    return next(model.parameters()).device


def line_end_id(tokenizer: Tokenizer) -> int:
    """The token that ends a line: <eos>, or the newline character for a char tokenizer."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.encode("\n")[-1]


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> tuple[list[int], list[str]]:
    """The prompt's ids (its last line left open), starting after a line end as training text
    does, and the prompt words that are out of vocabulary (they read as <unk>)."""
    return [line_end_id(tokenizer), *tokenizer.encode(prompt, add_eos=False)], tokenizer.unknown_words(prompt)


@torch.no_grad()
def _read(model: RNNLanguageModel, ids: list[int]) -> tuple[Tensor, State]:
    """Run the model over ids from the start state; return the log-probabilities (V,) of the next
    token and the state."""
    x = torch.tensor(ids, dtype=torch.long, device=_device(model))[:, None]  # (T, 1)
    logits, state = model(x, model.start_state(1))
    return F.log_softmax(logits[-1, 0].float(), dim=-1), state


def predict_next(model: RNNLanguageModel, tokenizer: Tokenizer, prompt: str, top_k: int = 5) -> tuple[list[Prediction], list[str]]:
    """The top_k most probable next tokens after `prompt`, most probable first, and the prompt's
    out-of-vocabulary words."""
    if top_k < 1:
        raise RnnkitError(f"--top-k must be at least 1, got {top_k}")
    model.eval()
    ids, unknown = encode_prompt(tokenizer, prompt)
    logp, _ = _read(model, ids)
    values, indices = logp.topk(min(top_k, logp.numel()))
    return [Prediction(tokenizer.token(int(i)), math.exp(float(v))) for v, i in zip(values, indices)], unknown


def _filter(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Keep the top_k tokens and the smallest set whose probability reaches top_p (nucleus)."""
    if top_k is not None and top_k < logits.numel():
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # tokens after the mass is reached
        logits = logits.masked_fill(drop.scatter(0, order, drop), -math.inf)
    return logits


@torch.no_grad()
def sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prompt: str = "",
    length: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Generate `length` tokens after `prompt`, yielding the text as it grows.

    temperature 0 is greedy decoding; otherwise tokens are drawn from softmax(logits / temperature)
    restricted by top_k and top_p.
    """
    if length < 1 or temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise RnnkitError("need --length >= 1, --temperature >= 0, --top-k >= 1 and --top-p in (0, 1]")
    model.eval()
    generator = torch.Generator(device=_device(model))
    if seed is not None:
        generator.manual_seed(seed)
    ids, _ = encode_prompt(tokenizer, prompt)
    logp, state = _read(model, ids)
    out: list[int] = []
    text = ""
    for _ in range(length):
        if temperature == 0:
            token = int(logp.argmax())
        else:
            probs = _filter(logp / temperature, top_k, top_p).softmax(-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        out.append(token)
        new_text = tokenizer.decode(out)
        yield new_text[len(text):]
        text = new_text
        x = torch.tensor([[token]], device=_device(model))  # (1, 1)
        logits, state = model(x, state)
        logp = F.log_softmax(logits[-1, 0].float(), dim=-1)


@torch.no_grad()
def beam_search(model: RNNLanguageModel, tokenizer: Tokenizer, prompt: str = "", length: int = 20, beam: int = 5) -> tuple[str, float]:
    """The continuation of `length` tokens with the highest total log-probability among those a
    beam of width `beam` keeps; returns its text and log-probability."""
    if beam < 1 or length < 1:
        raise RnnkitError(f"need --beam >= 1 and --length >= 1, got {beam} and {length}")
    model.eval()
    ids, _ = encode_prompt(tokenizer, prompt)
    logp, state = _read(model, ids)
    V = logp.numel()
    scores, tokens = logp.topk(min(beam, V))  # (K,)
    sequences = tokens[:, None]  # (K, 1)
    state = tuple(s.expand(-1, len(tokens), -1).contiguous() for s in state) if isinstance(state, tuple) else state.expand(-1, len(tokens), -1).contiguous()
    for _ in range(length - 1):
        logits, state = model(sequences[:, -1][None], state)  # (1, K, V)
        total = scores[:, None] + F.log_softmax(logits[0].float(), dim=-1)  # (K, V)
        scores, flat = total.flatten().topk(min(beam, total.numel()))
        parent, token = flat // V, flat % V
        sequences = torch.cat([sequences[parent], token[:, None]], dim=1)
        state = tuple(s[:, parent] for s in state) if isinstance(state, tuple) else state[:, parent]
    return tokenizer.decode(sequences[0].tolist()), float(scores[0])
