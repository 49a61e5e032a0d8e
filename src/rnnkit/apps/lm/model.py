"""The recurrent language model: embedding -> Recurrent -> dropout -> output layer V.

    token ids (T, B) -> E x_t (T, B, E) -> S_t (T, B, H) -> O_t = V S_t + c (T, B, V) -> softmax
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...nn.cells import State
from ...configs import JSONConfig
from ...nn.recurrent import Recurrent


@dataclass(frozen=True)
class LMConfig(JSONConfig):
    """Shape and regularisation of an RNNLanguageModel; saved as JSON in the model directory."""

    what: ClassVar[str] = "model config"

    vocab_size: int  # V, from the tokenizer
    cell: str = "lstm"  # "elman", "lstm" or "gru"
    hidden_size: int = 256  # H
    embedding_size: int | None = None  # E; None: H (required equal to H by tie_weights)
    num_layers: int = 2  # L
    nonlinearity: str = "tanh"  # F of the Elman cell
    dropout: float = 0.0  # on the last layer's output, before V (Zaremba et al. 2014)
    dropout_input: float = 0.0  # on the embedded inputs
    dropout_hidden: float | None = None  # between layers; None: same as dropout
    dropout_embedding: float = 0.0  # whole rows of the embedding (word dropout, Gal & Ghahramani 2016)
    variational: bool = False  # one dropout mask per sequence, shared over time
    weight_drop: float = 0.0  # DropConnect on the recurrent matrices W (Merity et al. 2017)
    tie_weights: bool = False  # V = embedding matrix (Press & Wolf 2017)

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {self.vocab_size}")
        if self.tie_weights and self.embedding_size not in (None, self.hidden_size):
            raise ValueError(
                f"tie_weights needs embedding_size == hidden_size, got {self.embedding_size} and {self.hidden_size}"
            )
        for name in ("dropout", "dropout_input", "dropout_embedding", "weight_drop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    @property
    def input_size(self) -> int:
        return self.embedding_size or self.hidden_size



class RNNLanguageModel(nn.Module):
    """Predicts token t+1 from tokens 1..t: logits = V S_t + c, with S_t from a Recurrent stack.

    forward(ids (T, B), state) -> (logits (T, B, V), state). The state carries the memory from one
    window of text to the next (truncated backpropagation through time).
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        options: dict[str, Any] = {"nonlinearity": config.nonlinearity} if config.cell == "elman" else {}
        hidden_dropout = config.dropout if config.dropout_hidden is None else config.dropout_hidden
        self.embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.rnn = Recurrent(
            config.cell, config.input_size, config.hidden_size, config.num_layers,
            dropout=hidden_dropout, variational=config.variational, weight_drop=config.weight_drop, **options,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)  # V and c
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if not config.tie_weights:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        # The state at the start of a line, for reading a prompt: (S, L*D, H), S = 2 for (h, c).
        # Training carries state across lines, so the zero state is seen once per epoch and a prompt
        # read from it is read badly; `calibrate_start_state` sets this from real line ends.
        parts = 2 if self.rnn.has_cell_state else 1
        self.register_buffer("start", torch.zeros(parts, config.num_layers, config.hidden_size))

    def init_state(self, batch_size: int) -> State:
        """The zero state, where training streams begin."""
        return self.rnn.init_state(batch_size)

    def start_state(self, batch_size: int) -> State:
        """The calibrated state of a line start, for prompts: h (L, B, H), or (h, c)."""
        parts = tuple(p[:, None].expand(-1, batch_size, -1).contiguous() for p in self.start)  # (L, B, H) each
        return parts if self.rnn.has_cell_state else parts[0]

    @torch.no_grad()
    def calibrate_start_state(self, ids: Any, line_end: int, lines: int = 64, context: int = 40) -> None:
        """Set the start state to the mean state after up to `lines` line ends of `ids`, each
        reached by reading the `context` tokens before it from the zero state."""
        ids = torch.as_tensor(np.asarray(ids[: 200 * context * lines], dtype=np.int64))
        ends = (ids == line_end).nonzero().flatten()
        ends = ends[ends >= context][:lines]
        if len(ends) == 0:
            return
        was_training = self.training
        self.eval()
        windows = torch.stack([ids[e - context + 1 : e + 1] for e in ends.tolist()], dim=1)  # (context, N)
        _, state = self(windows.to(self.start.device))
        parts = state if isinstance(state, tuple) else (state,)
        self.start.copy_(torch.stack([p.mean(dim=1) for p in parts]))  # (S, L, H)
        self.train(was_training)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        if not self.training or p == 0:
            return x
        if not self.config.variational:
            return F.dropout(x, p, True)
        keep = 1.0 - p
        return x * x.new_empty(1, *x.shape[1:]).bernoulli_(keep).div_(keep)  # one mask over T

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids (T, B) -> embedded inputs (T, B, E), with word and input dropout in training."""
        weight = self.embedding.weight
        p = self.config.dropout_embedding
        if self.training and p > 0:
            keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p).div_(1 - p)
            weight = weight * keep  # a dropped word is dropped at every position of the batch
        return self._dropout(F.embedding(ids, weight), self.config.dropout_input)

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        return self.forward_embedded(self.embed(ids), state)

    def forward_embedded(self, inputs: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The model from embedded inputs (T, B, E) on: logits (T, B, V) and the state. Used where
        the inputs themselves need a gradient (attribution)."""
        hidden, state = self.rnn(inputs, state)  # (T, B, H)
        return self.head(self._dropout(hidden, self.config.dropout)), state  # (T, B, V)

    def loss(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Mean cross-entropy (nats per token) of predicting targets (T, B) from ids (T, B)."""
        logits, state = self(ids, state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), state

