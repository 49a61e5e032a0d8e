"""Where the captioner looked: the image, then one panel per word with its attention laid over it."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor
from torch.nn import functional as F

from ...data import Tokenizer
from .task import Caption


def upsample(weights: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Attention over the grid (T, h, w) -> over the pixels (T, H, W), each cell's weight spread
    evenly over its pixels (so a word's map still sums to 1)."""
    T, h, w = weights.shape
    spread = F.interpolate(weights[:, None], size=size, mode="nearest")[:, 0]  # (T, H, W)
    return (spread * (h * w) / (size[0] * size[1])).numpy()


def plot_caption_attention(image: Tensor, weights: Tensor, tokenizer: Tokenizer, caption: Caption) -> Figure:
    """image uint8 (3, H, W); weights (T + 1, h, w) from `attention_map`."""
    pixels = image.permute(1, 2, 0).numpy()
    H, W = pixels.shape[:2]
    words = [*(tokenizer.token(i) for i in caption.tokens), "<end>"]
    maps = upsample(weights.float(), (H, W))
    columns = min(6, len(words) + 1)
    rows = math.ceil((len(words) + 1) / columns)
    fig = Figure(figsize=(1.9 * columns, 1.9 * rows * H / W + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).flatten()
    axes[0].imshow(pixels)
    axes[0].set_title("image", fontsize=9)
    for ax, word, attention in zip(axes[1:], words, maps):
        ax.imshow(pixels)
        ax.imshow(attention / max(attention.max(), 1e-12), cmap="gray", alpha=0.65, vmin=0, vmax=1)
        ax.set_title(word, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(caption.text, fontsize=10)
    return fig
