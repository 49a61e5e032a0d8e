"""Using a trained language model: the next-token distribution, sampling and beam search."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ...nn.cells import State
from ...errors import RnnkitError
from .model import RNNLanguageModel
from ...data import Tokenizer


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
    """Run the model (in eval mode) over ids from the start state; return the log-probabilities (V,)
    of the next token and the state.

    The model's forward in eval mode, with the output layer V applied to the last step only: one
    (H, V) product instead of one per prompt token (2x650 LSTM, 21 tokens: 8.0 -> 6.0 ms)."""
    x = torch.tensor(ids, dtype=torch.long, device=_device(model))[:, None]  # (T, 1)
    hidden, state = model.rnn(model.embed(x), model.start_state(1))  # (T, 1, H)
    logits = model.head(hidden[-1:])  # (1, 1, V)
    return F.log_softmax(logits[-1, 0].float(), dim=-1), state


@torch.no_grad()
def next_log_probs(model: RNNLanguageModel, tokenizer: Tokenizer, prompts: Sequence[str]) -> Tensor:
    """log p(next token | prompt) for each prompt, (N, V): the prompts read as one batch, each from
    the start state, padded after its end (a recurrent model never reads ahead)."""
    model.eval()
    ids = [encode_prompt(tokenizer, prompt)[0] for prompt in prompts]
    lengths = torch.tensor([len(i) for i in ids])
    x = torch.full((int(lengths.max()), len(ids)), line_end_id(tokenizer), dtype=torch.long)  # (T, N)
    for j, sequence in enumerate(ids):
        x[: len(sequence), j] = torch.tensor(sequence)
    hidden, _ = model.rnn(model.embed(x.to(_device(model))), model.start_state(len(ids)))  # (T, N, H)
    last = hidden[lengths - 1, torch.arange(len(ids))]  # (N, H): each prompt's last step
    return F.log_softmax(model.head(last).float(), dim=-1)


@torch.no_grad()
def _step(model: RNNLanguageModel, tokens: Tensor, state: State) -> tuple[Tensor, State]:
    """One time step of the model (in eval mode) for tokens (1, K): logits (1, K, V) and the state.

    On a CPU an LSTM steps through its cells, layer by layer: at every call the fused kernel
    (oneDNN's) copies each weight matrix into a layout of its own, which for a single token costs
    more than the step (2x650: about 80 tokens/s through the fused kernel, 230 through the cells;
    docs/benchmarks.md). The two compute the same function (tests hold the backends equal)."""
    if model.config.cell != "lstm" or tokens.device.type != "cpu":
        return model(tokens, state)
    x = model.embed(tokens)[0]  # (K, E)
    h, c = [], []
    for layer, cell in enumerate(model.rnn.cells):  # one cell per layer: a language model reads forwards
        x, (h_layer, c_layer) = cell(x, (state[0][layer], state[1][layer]))
        h.append(h_layer)
        c.append(c_layer)
    return model.head(x)[None], (torch.stack(h), torch.stack(c))  # (1, K, V); (L, K, H) each


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
        logits, state = _step(model, x, state)
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
        logits, state = _step(model, sequences[:, -1][None], state)  # (1, K, V)
        total = scores[:, None] + F.log_softmax(logits[0].float(), dim=-1)  # (K, V)
        scores, flat = total.flatten().topk(min(beam, total.numel()))
        parent, token = flat // V, flat % V
        sequences = torch.cat([sequences[parent], token[:, None]], dim=1)
        state = tuple(s[:, parent] for s in state) if isinstance(state, tuple) else state[:, parent]
    return tokenizer.decode(sequences[0].tolist()), float(scores[0])
