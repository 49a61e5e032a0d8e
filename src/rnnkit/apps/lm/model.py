"""The recurrent language model: embedding -> Recurrent -> dropout -> output layer V.

    token ids (T, B) -> E x_t (T, B, E) -> S_t (T, B, H) -> O_t = V S_t + c (T, B, V) -> softmax

It follows the decoding protocol (`step`, `reorder_state`; see `rnnkit.decoding`), so sampling and
beam search run on it as on any model that writes tokens. A model in use is shared read-only:
nothing here switches it between training and evaluation, which is the caller's (the training
loop's, or `load_model`'s, which returns it in eval mode) to do once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...configs import FieldChecks, JSONConfig
from ...errors import ParameterError
from ...nn.cells import State, cell_class
from ...nn.functional import cross_entropy, dropout
from ...nn.recurrent import Recurrent


MAX_LAYERS = 256  # deeper stacks are not trained; the bound keeps a crafted config.json cheap to refuse


@dataclass(frozen=True)
class LMConfig(JSONConfig):
    """Shape and regularisation of an RNNLanguageModel; saved as JSON in the model directory."""

    what: ClassVar[str] = "model config"

    vocab_size: int  # V, from the tokenizer
    cell: str = "lstm"  # "elman", "lstm", "gru", or a cell registered by the user
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
        check = FieldChecks(self)
        check.integer("vocab_size", minimum=2)
        cell_class(self.cell)
        check.integer("hidden_size", minimum=1)
        check.integer("num_layers", minimum=1, maximum=MAX_LAYERS)
        check.integer("embedding_size", minimum=1, optional=True)
        check.choice("nonlinearity", ("tanh", "relu"))
        for name in ("dropout", "dropout_input", "dropout_embedding", "weight_drop"):
            check.fraction(name)
        check.fraction("dropout_hidden", optional=True)
        check.boolean("variational")
        check.boolean("tie_weights")
        if self.tie_weights and self.embedding_size not in (None, self.hidden_size):
            raise ParameterError(
                "tie_weights", f"needs embedding_size == hidden_size, got {self.embedding_size} and {self.hidden_size}"
            )

    @property
    def input_size(self) -> int:
        return self.embedding_size or self.hidden_size


def require_eval(model: nn.Module) -> None:
    """Using a model never switches its mode (it may be shared between threads): ask for eval."""
    if model.training:
        raise ValueError(f"{type(model).__name__} is in training mode (dropout on): call model.eval() once before using it")


class RNNLanguageModel(nn.Module):
    """Predicts token t+1 from tokens 1..t: logits = V S_t + c, with S_t from a Recurrent stack.

    forward(ids (T, B), state) -> (logits (T, B, V), state). The state carries the memory from one
    window of text to the next (truncated backpropagation through time).
    """

    kind: ClassVar[str] = "lm"  # config.json's "kind"

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
        # Inputs x_t of unit variance, as PyTorch's own N(0, 1): Zaremba's uniform +-0.1 (std 0.06)
        # starves the first layer, which SGD at lr 20 outgrows in a few steps but AdamW, whose steps
        # are about lr = 2e-3 whatever the gradient, does not (a char LSTM sat at 3.0 nats for 40
        # steps). A tied matrix is also V, whose logits V S_t must start small: std 0.3 trains as
        # +-0.1 does under SGD and without the stall under AdamW (measured; docs/benchmarks.md).
        nn.init.normal_(self.embedding.weight, std=0.3 if config.tie_weights else 1.0)
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
        reached by reading the `context` tokens before it from the zero state (in eval mode)."""
        require_eval(self)
        ids = torch.as_tensor(np.asarray(ids[: 200 * context * lines], dtype=np.int64))
        ends = (ids == line_end).nonzero().flatten()
        ends = ends[ends >= context][:lines]
        if len(ends) == 0:
            return
        windows = torch.stack([ids[e - context + 1 : e + 1] for e in ends.tolist()], dim=1)  # (context, N)
        _, state = self(windows.to(self.start.device))
        parts = state if isinstance(state, tuple) else (state,)
        self.start.copy_(torch.stack([p.mean(dim=1) for p in parts]))  # (S, L, H)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        # one step (x.dim() < 3): a fresh mask is a locked one
        locked = self.config.variational and x.dim() == 3
        return dropout(x, p, self.training, (1, *x.shape[1:]) if locked else None)  # one mask over T

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids (T, B) -> embedded inputs (T, B, E), with word and input dropout in training."""
        weight = self.embedding.weight  # (V, E); a dropped word is dropped at every position of the batch
        weight = dropout(weight, self.config.dropout_embedding, self.training, (weight.shape[0], 1))
        return self._dropout(F.embedding(ids, weight), self.config.dropout_input)

    def forward(
        self, ids: Tensor, state: State | None = None, lengths: Tensor | None = None, last_only: bool = False
    ) -> tuple[Tensor, State]:
        """Logits (T, B, V) for token ids (T, B), and the state after them.

        lengths (B,): sequences padded after their ends; the state is each one's after its own
        last token. last_only: the logits of each sequence's last token alone, (B, V): the
        output layer, an (H, V) product, runs once per sequence instead of once per token.
        """
        return self.forward_embedded(self.embed(ids), state, lengths, last_only)

    def forward_embedded(
        self, inputs: Tensor, state: State | None = None, lengths: Tensor | None = None, last_only: bool = False
    ) -> tuple[Tensor, State]:
        """`forward` from embedded inputs (T, B, E) on; used where the inputs themselves need a
        gradient (attribution)."""
        hidden, state = self.rnn(inputs, state, lengths)  # (T, B, H)
        if last_only:
            hidden = hidden[-1] if lengths is None else hidden[lengths - 1, torch.arange(hidden.shape[1])]  # (B, H)
        return self.head(self._dropout(hidden, self.config.dropout)), state  # (T, B, V) or (B, V)

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One token for each of B sequences, (B,), -> log-probabilities of the next (B, V) and
        the state: the decoding protocol's step."""
        x = self.embed(tokens[None])[0]  # (B, E)
        if x.is_cuda:
            hidden, state = self.rnn(x[None], state)  # the fused kernel
            hidden = hidden[0]
        else:
            hidden, state = self.rnn.step(x, state)  # (B, H); faster than oneDNN's kernel for one step
        return F.log_softmax(self.head(self._dropout(hidden, self.config.dropout)).float(), dim=-1), state

    @staticmethod
    def reorder_state(state: State, index: Tensor) -> State:
        """The state of sequences index[0], index[1], ...: (L, M, H) each."""
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)
        return state.index_select(1, index)

    def loss(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Mean cross-entropy (nats per token) of predicting targets (T, B) from ids (T, B)."""
        logits, state = self(ids, state)
        return cross_entropy(logits.flatten(0, 1), targets.flatten()), state

