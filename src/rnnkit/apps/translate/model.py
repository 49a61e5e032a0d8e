"""An encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015) for translation.

    source ids (S, B) -> embedding -> bidirectional Recurrent -> memory m_1..m_S (B, S, H)
                                                      final states -> bridge -> s_0
    decoder, one target token at a time (input feeding, Luong et al. section 3.3):
        s_t   = cell([E y_{t-1}; h~_{t-1}], s_{t-1})
        c_t   = attention(s_t, m)                       (`rnnkit.nn.attention`, padding masked)
        h~_t  = tanh(W_c [c_t; s_t])
        p(y_t | y_<t, x) = softmax(W_o h~_t + b_o)

Each direction of the encoder has H/2 units, so that the memory has the decoder's size H and the
dot score applies. Translation runs the decoding protocol (`step`, `reorder_state`): greedy and
beam search come from `rnnkit.decoding`, as for the language model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...configs import FieldChecks, JSONConfig
from ...errors import ParameterError
from ...nn.attention import SCORES, Attention
from ...nn.cells import State, cell_class
from ...nn.functional import dropout
from ...nn.recurrent import Recurrent
from ..lm.model import require_eval
from .data import PAD, Batch


@dataclass(frozen=True)
class TranslateConfig(JSONConfig):
    """Shape of a Translator; saved as JSON in the model directory."""

    what: ClassVar[str] = "model config"

    source_vocab_size: int  # from the source tokenizer
    target_vocab_size: int  # from the target tokenizer
    cell: str = "gru"  # "gru", "lstm", "elman", or a cell registered by the user
    embedding_size: int = 256  # E, source and target
    hidden_size: int = 512  # H: the decoder's state and the memory (each encoder direction has H/2)
    encoder_layers: int = 1
    decoder_layers: int = 1
    attention: str = "bahdanau"  # the score: "bahdanau" (additive), "general" or "dot" (Luong)
    dropout: float = 0.2  # on embeddings, between layers and before the output layer
    tie_embeddings: bool = False  # W_o = the target embedding (Press & Wolf 2017); needs E == H
    max_length: int = 128  # the longest source read (tokens); longer ones are cut, with a warning

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.integer("source_vocab_size", minimum=2)
        check.integer("target_vocab_size", minimum=2)
        cell_class(self.cell)
        for name in ("embedding_size", "max_length"):
            check.integer(name, minimum=1)
        check.integer("hidden_size", minimum=2)
        if self.hidden_size % 2:
            raise ParameterError("hidden_size", f"must be even (each encoder direction has H/2), got {self.hidden_size}")
        for name in ("encoder_layers", "decoder_layers"):
            check.integer(name, minimum=1, maximum=64)
        check.choice("attention", SCORES)
        check.fraction("dropout")
        check.boolean("tie_embeddings")
        if self.tie_embeddings and self.embedding_size != self.hidden_size:
            raise ParameterError("tie_embeddings", f"needs embedding_size == hidden_size, got {self.embedding_size} "
                                                   f"and {self.hidden_size}")


class DecoderState(NamedTuple):
    """What the decoder carries from token to token; every tensor has the batch first but `rnn`."""

    rnn: State  # s_t: (L, B, H), or (h, c)
    feed: Tensor  # h~_t (B, H), fed to the next step
    memory: Tensor  # m (B, S, H)
    keys: Tensor  # the attention's precomputed keys (B, S, .)
    mask: Tensor  # (B, S), True on real source tokens
    weights: Tensor  # the last step's attention (B, S)


class Translator(nn.Module):
    """forward(batch) -> (logits (T, B, V), attention weights (T, B, S)) under teacher forcing."""

    kind: ClassVar[str] = "translate"  # config.json's "kind"

    def __init__(self, config: TranslateConfig) -> None:
        super().__init__()
        self.config = config
        E, H = config.embedding_size, config.hidden_size
        self.source_embedding = nn.Embedding(config.source_vocab_size, E)
        self.target_embedding = nn.Embedding(config.target_vocab_size, E)
        self.encoder = Recurrent(config.cell, E, H // 2, config.encoder_layers, dropout=config.dropout, bidirectional=True)
        parts = 2 if self.encoder.has_cell_state else 1
        self.bridge = nn.Linear(H, parts * config.decoder_layers * H)  # [->m_S; <-m_1] -> s_0 (and c_0)
        self.decoder = Recurrent(config.cell, E + H, H, config.decoder_layers, dropout=config.dropout)
        self.attention = Attention(config.attention, H, H)
        self.combine = nn.Linear(2 * H, H, bias=False)  # W_c
        self.out = nn.Linear(H, config.target_vocab_size)  # W_o, b_o
        if config.tie_embeddings:
            self.out.weight = self.target_embedding.weight

    def _drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.config.dropout, self.training)

    def encode(self, source: Tensor, lengths: Tensor) -> DecoderState:
        """Read source ids (S, B) of `lengths` (B,); the decoder's state before its first token."""
        memory, final = self.encoder(self._drop(self.source_embedding(source)), lengths=lengths)  # (S, B, H)
        B, H, L = source.shape[1], self.config.hidden_size, self.config.decoder_layers
        h = final[0] if isinstance(final, tuple) else final  # (2 L_enc, B, H/2)
        parts = 2 if isinstance(final, tuple) else 1
        # the top layer's last forward and backward states -> s_0 (and c_0) of every decoder layer
        start = torch.tanh(self.bridge(torch.cat([h[-2], h[-1]], dim=-1))).view(B, parts, L, H)
        start = start.permute(1, 2, 0, 3).contiguous()  # (parts, L, B, H)
        rnn = (start[0], start[1]) if parts == 2 else start[0]
        memory = memory.transpose(0, 1)  # (B, S, H)
        mask = torch.arange(source.shape[0], device=source.device)[None] < lengths[:, None]  # (B, S)
        return DecoderState(rnn, memory.new_zeros(B, H), memory, self.attention.keys(memory), mask,
                            memory.new_zeros(B, source.shape[0]))

    def decode_step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One target token per sentence (B,) -> h~_t (B, H) and the next state."""
        x = self._drop(torch.cat([self.target_embedding(tokens), state.feed], dim=-1))  # (B, E + H)
        s, rnn = self.decoder.step(x, state.rnn)  # (B, H)
        context, weights = self.attention(s, state.keys, state.memory, state.mask)  # (B, H), (B, S)
        feed = torch.tanh(self.combine(torch.cat([context, s], dim=-1)))  # (B, H)
        return feed, state._replace(rnn=rnn, feed=feed, weights=weights)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        state = self.encode(batch.source, batch.source_lengths)
        inputs = batch.target[:-1].clamp(min=0)  # (T, B): padding read as token 0, its outputs ignored
        feeds, weights = [], []
        for y in inputs:
            feed, state = self.decode_step(y, state)
            feeds.append(feed)
            weights.append(state.weights)
        logits = self.out(self._drop(torch.stack(feeds)))  # (T, B, V): one product for all steps
        return logits, torch.stack(weights)  # (T, B, V), (T, B, S)

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy per target token (its final <eos> included, padding not)."""
        logits, _ = self(batch)
        return F.cross_entropy(logits.flatten(0, 1), batch.target[1:].flatten(), ignore_index=PAD,
                               label_smoothing=label_smoothing)

    # the decoding protocol (rnnkit.decoding)

    def start(self, source: Tensor, lengths: Tensor, bos: int) -> tuple[Tensor, DecoderState]:
        """Encode the source and read the start token: the first log-probabilities (B, V) and state."""
        require_eval(self)
        state = self.encode(source, lengths)
        return self.step(torch.full((source.shape[1],), bos, dtype=torch.long, device=source.device), state)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        feed, state = self.decode_step(tokens, state)
        return F.log_softmax(self.out(feed).float(), dim=-1), state

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        rnn = (tuple(s.index_select(1, index) for s in state.rnn) if isinstance(state.rnn, tuple)
               else state.rnn.index_select(1, index))
        return DecoderState(rnn, *(t.index_select(0, index) for t in state[1:]))

    def extra_repr(self) -> str:
        return f"attention={self.config.attention}"

