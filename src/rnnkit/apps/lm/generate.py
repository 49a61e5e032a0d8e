"""Using a trained language model on text: the next-token distribution, sampling and beam search.

Prompts are read from the model's calibrated start state (see
`RNNLanguageModel.calibrate_start_state`) into the first log-probabilities and state; from there
`rnnkit.decoding` samples or searches, as for any model that writes tokens. The model runs as it
is, in eval mode (`load_model` returns it so); nothing here changes its mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ... import decoding
from ...data import Tokenizer
from ...configs import check_positive_integer, check_seed
from ...nn.cells import State
from .model import RNNLanguageModel, require_eval


@dataclass(frozen=True)
class Prediction:
    token: str
    prob: float


def _device(model: RNNLanguageModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def read_prompts(model: RNNLanguageModel, tokenizer: Tokenizer, prompts: Sequence[str]) -> tuple[Tensor, State]:
    """Read the prompts as one batch, each from the start state: log p(next token | prompt) (N, V)
    and the state after each prompt's last token. Shorter prompts are padded after their end (a
    recurrent model never reads ahead)."""
    require_eval(model)
    device = _device(model)
    ids = [torch.tensor(tokenizer.encode_prompt(prompt)) for prompt in prompts]
    lengths = [len(i) for i in ids]
    x = torch.nn.utils.rnn.pad_sequence(ids, padding_value=tokenizer.line_end_id) if len(ids) > 1 else ids[0][:, None]
    padded = min(lengths) < max(lengths)
    logits, state = model(x.to(device), model.start_state(len(ids)),
                          torch.tensor(lengths, device=device) if padded else None, last_only=True)  # (N, V)
    return F.log_softmax(logits.float(), dim=-1), state


def next_log_probs(model: RNNLanguageModel, tokenizer: Tokenizer, prompts: Sequence[str]) -> Tensor:
    """log p(next token | prompt) for each prompt, (N, V)."""
    return read_prompts(model, tokenizer, prompts)[0]


def predict_next(
    model: RNNLanguageModel, tokenizer: Tokenizer, prompt: str, top_k: int = 5
) -> tuple[list[Prediction], list[str]]:
    """The top_k most probable next tokens after `prompt`, most probable first, and the prompt's
    out-of-vocabulary words (they read as <unk>)."""
    check_positive_integer("top_k", top_k)
    logp = next_log_probs(model, tokenizer, [prompt])[0]  # (V,)
    values, indices = logp.topk(min(top_k, logp.numel()))
    predictions = [Prediction(tokenizer.token(int(i)), math.exp(float(v))) for v, i in zip(values, indices)]
    return predictions, tokenizer.unknown_words(prompt)


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
    """Generate `length` tokens after `prompt`, yielding the text as it grows, in constant time per
    token and only in whole characters (a bpe piece may end inside one).

    temperature 0 is greedy decoding; otherwise tokens are drawn from softmax(logits / temperature)
    restricted by top_k and top_p (see `rnnkit.decoding.sample`); `seed` makes the draw repeatable
    (without one, every call draws differently).
    """
    decoding.sampling.check_sampling(length, temperature, top_k, top_p)  # now, not at the first token
    log_probs, state = read_prompts(model, tokenizer, [prompt])
    generator = torch.Generator(device=_device(model))
    if seed is None:
        generator.seed()  # a fresh draw every time: a new Generator alone always starts from one seed
    else:
        check_seed(seed)
        generator.manual_seed(seed)
    tokens = decoding.sample(model, log_probs, state, length, temperature, top_k, top_p, generator)
    return _text(tokenizer, (int(t[0]) for t in tokens))


def _text(tokenizer: Tokenizer, ids: Iterator[int]) -> Iterator[str]:
    """The text of ids as they come, whole characters only (see `Tokenizer.stream`)."""
    stream = tokenizer.stream()
    for i in ids:
        if piece := stream.step(i):
            yield piece
    if tail := stream.flush():
        yield tail


def beam_search(
    model: RNNLanguageModel, tokenizer: Tokenizer, prompt: str = "", length: int = 20, beam: int = 5
) -> tuple[str, float]:
    """The continuation of `length` tokens with the highest total log-probability among those a
    beam of width `beam` keeps; returns its text and log-probability."""
    log_probs, state = read_prompts(model, tokenizer, [prompt])
    best = decoding.beam_search(model, log_probs, state, length, beam)[0][0]
    return tokenizer.decode(best.tokens), best.score
