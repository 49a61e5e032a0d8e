"""The attention heat map: which source tokens the decoder read while writing each target token."""

from __future__ import annotations

from matplotlib.figure import Figure
from torch import Tensor

from ...data import Tokenizer
from .task import Translation, Vocabularies


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """How each token reads on its own: a word, a character, or a BPE piece as text."""
    return [tokenizer.decode([i]).strip() or repr(tokenizer.decode([i])) for i in ids]


def plot_attention(weights: Tensor, vocab: Vocabularies, translation: Translation) -> Figure:
    """weights (T + 1, S) from `attention_map`: target tokens (and the end) down, source tokens across."""
    source = token_labels(vocab.source, translation.encoded.ids)
    target = [*token_labels(vocab.target, translation.tokens), "<end>"]
    fig = Figure(figsize=(max(4.0, 0.45 * len(source) + 2), max(3.0, 0.35 * len(target) + 1.5)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(target)), target, fontsize=9)
    ax.set(xlabel="source", ylabel="translation")
    ax.set_title(f"{translation.source[:60]}\n-> {translation.text[:60]}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig
