"""Show, Attend and Tell (Xu et al. 2015): a CNN encodes the image once into a grid of feature
vectors; an LSTM writes the caption word by word, looking at the grid through soft attention.

    image (B, 3, H, W) + coordinate channels -> 3 x [conv 3x3, ReLU, max-pool 2] -> grid a (B, L, D),
        L = H/8 x W/8 cells, each with its own coordinates again (CoordConv, Liu et al. 2018)
    h_0, c_0 = tanh(W_h mean_i a_i), tanh(W_c mean_i a_i)                          (section 3.1.2)
    alpha_t = softmax_i score(h_{t-1}, a_i)      z_t = beta_t sum_i alpha_ti a_i,
        beta_t = sigmoid(W_beta h_{t-1}), the gate of section 4.2.1
    h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
    p(y_t | image, y_<t) = softmax(W_o dropout([h_t; z_t]))

Training adds the doubly stochastic penalty lambda sum_i (1 - sum_t alpha_ti)^2 (section 4.2.1),
which asks every cell to be looked at about once over the caption. Captioning runs the decoding
protocol (`step`, `reorder_state`), so greedy and beam search come from `rnnkit.decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...configs import FieldChecks, JSONConfig
from ...nn.attention import SCORES, Attention
from ...nn.cells import State
from ...nn.functional import dropout
from ...nn.recurrent import Recurrent
from ..lm.model import require_eval
from ..translate.data import PAD


@dataclass(frozen=True)
class CaptionConfig(JSONConfig):
    """Shape of a Captioner; saved as JSON in the model directory."""

    what: ClassVar[str] = "model config"

    vocab_size: int  # V, from the word tokenizer
    image_height: int = 64  # images are resized to this
    image_width: int = 64
    channels: int = 32  # of the first convolution; each next one doubles it
    feature_size: int = 128  # D, of each grid cell
    embedding_size: int = 64  # E
    hidden_size: int = 256  # H of the LSTM
    attention: str = "bahdanau"  # "bahdanau" (additive, as Xu et al.), "general" or "dot"
    dropout: float = 0.2  # before the output layer and on the embeddings
    max_length: int = 40  # the longest caption written, in words

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.integer("vocab_size", minimum=2)
        for name in ("image_height", "image_width"):
            check.integer(name, minimum=8, maximum=1024)
        for name in ("channels", "feature_size", "embedding_size", "hidden_size", "max_length"):
            check.integer(name, minimum=1)
        check.choice("attention", SCORES)
        check.fraction("dropout")
        if self.attention == "dot" and self.feature_size != self.hidden_size:
            from ...errors import ParameterError

            raise ParameterError("attention", "dot needs feature_size == hidden_size")

    @property
    def grid(self) -> tuple[int, int]:
        """The attention grid: three poolings by 2."""
        return self.image_height // 8, self.image_width // 8


def coordinates(B: int, H: int, W: int, device: torch.device) -> Tensor:
    """(B, 2, H, W): x and y of every position, from -1 to 1."""
    y = torch.linspace(-1, 1, H, device=device)[:, None].expand(H, W)
    x = torch.linspace(-1, 1, W, device=device)[None, :].expand(H, W)
    return torch.stack([x, y])[None].expand(B, 2, H, W)


class CaptionState(NamedTuple):
    rnn: State  # (h, c), (1, B, H) each
    memory: Tensor  # the grid a (B, L, D)
    keys: Tensor  # the attention's keys (B, L, .)
    mask: Tensor  # (B, L), all True: every cell is real
    weights: Tensor  # the last step's attention alpha_t (B, L)


class Captioner(nn.Module):
    """forward(images (B, 3, H, W) in [0, 1], captions (T + 1, B)) -> (logits (T, B, V), alpha (T, B, L))."""

    kind: ClassVar[str] = "caption"

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__()
        self.config = config
        C, D, E, H = config.channels, config.feature_size, config.embedding_size, config.hidden_size
        self.cnn = nn.Sequential(
            nn.Conv2d(5, C, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(C, 2 * C, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * C, 4 * C, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.project = nn.Linear(4 * C + 2, D)  # each cell's features and its coordinates -> a_i
        self.init_h, self.init_c = nn.Linear(D, H), nn.Linear(D, H)
        self.attention = Attention(config.attention, H, D)
        self.gate = nn.Linear(H, 1)  # beta_t
        self.embedding = nn.Embedding(config.vocab_size, E)
        self.rnn = Recurrent("lstm", E + D, H)
        self.out = nn.Linear(H + D, config.vocab_size)

    def _drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.config.dropout, self.training)

    def encode(self, images: Tensor) -> CaptionState:
        """images (B, 3, H, W) in [0, 1] -> the decoder's state before the first word."""
        B, _, Hi, Wi = images.shape
        features = self.cnn(torch.cat([images * 2 - 1, coordinates(B, Hi, Wi, images.device)], dim=1))  # (B, 4C, h, w)
        h, w = features.shape[-2:]
        features = torch.cat([features, coordinates(B, h, w, images.device)], dim=1)
        memory = torch.relu(self.project(features.flatten(2).transpose(1, 2)))  # (B, L, D), L = h w
        mean = memory.mean(1)
        rnn = (torch.tanh(self.init_h(mean))[None], torch.tanh(self.init_c(mean))[None])  # (1, B, H) each
        mask = torch.ones(B, h * w, dtype=torch.bool, device=images.device)
        return CaptionState(rnn, memory, self.attention.keys(memory), mask, memory.new_zeros(B, h * w))

    def decode_step(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState]:
        """One word per image (B,) -> the output layer's input [h_t; z_t] (B, H + D) and the state."""
        h_prev = state.rnn[0][-1]  # (B, H)
        context, alpha = self.attention(h_prev, state.keys, state.memory, state.mask)  # (B, D), (B, L)
        z = torch.sigmoid(self.gate(h_prev)) * context
        h, rnn = self.rnn.step(torch.cat([self._drop(self.embedding(tokens)), z], dim=-1), state.rnn)  # (B, H)
        return torch.cat([h, z], dim=-1), state._replace(rnn=rnn, weights=alpha)

    def forward(self, images: Tensor, captions: Tensor, which: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """which (B,): the image of each caption, when images hold each image once for its captions."""
        state = self.encode(images)  # each image encoded once, however many captions it has
        if which is not None:
            state = self.reorder_state(state, which)
        outputs, alphas = [], []
        for y in captions[:-1].clamp(min=0):  # padding read as word 0, its outputs ignored
            output, state = self.decode_step(y, state)
            outputs.append(output)
            alphas.append(state.weights)
        return self.out(self._drop(torch.stack(outputs))), torch.stack(alphas)  # (T, B, V), (T, B, L)

    def loss(self, images: Tensor, captions: Tensor, penalty: float = 0.0, which: Tensor | None = None) -> Tensor:
        """Mean cross-entropy per word (the end included) + penalty * mean_b,i (1 - sum_t alpha_ti)^2."""
        logits, alphas = self(images, captions, which)
        targets = captions[1:]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
        if penalty:
            seen = (alphas * (targets != PAD)[:, :, None]).sum(0)  # (B, L): each cell's attention over the caption
            loss = loss + penalty * ((1 - seen) ** 2).mean()
        return loss

    # the decoding protocol (rnnkit.decoding)

    def start(self, images: Tensor, bos: int) -> tuple[Tensor, CaptionState]:
        require_eval(self)
        state = self.encode(images)
        return self.step(torch.full((images.shape[0],), bos, dtype=torch.long, device=images.device), state)

    def step(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState]:
        output, state = self.decode_step(tokens, state)
        return F.log_softmax(self.out(output).float(), dim=-1), state

    @staticmethod
    def reorder_state(state: CaptionState, index: Tensor) -> CaptionState:
        return CaptionState(tuple(s.index_select(1, index) for s in state.rnn),
                            *(t.index_select(0, index) for t in state[1:]))
