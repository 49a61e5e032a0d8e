"""The acoustic model: log-mel frames -> convolutional subsampling -> bidirectional recurrent
layers -> per-frame character log-probabilities, trained with CTC.

    features (T, B, F) -> 2 x [Conv2d 3x3, stride 2, ReLU] (T/4, B, C F/4) -> Linear -> H
        -> bidirectional Recurrent, L layers (H/2 per direction) -> Linear -> log softmax (T/4, B, K)

The stride-2 convolutions cut the frame rate from 100/s to 25/s: a character lasts about 3 such
frames at speaking rate, still enough for CTC's blanks between repeats, and the recurrent layers
run over 4 times fewer steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...configs import FieldChecks, JSONConfig
from ...errors import ParameterError
from ...nn.cells import cell_class
from ...nn.recurrent import Recurrent
from .data import ALPHABET


@dataclass(frozen=True)
class SpeechConfig(JSONConfig):
    """Shape of a SpeechRecognizer; saved as JSON in the model directory."""

    what: ClassVar[str] = "model config"

    alphabet: str = ALPHABET  # index 0 is CTC's blank
    n_mels: int = 80  # F
    channels: int = 32  # C of both convolutions
    cell: str = "gru"  # of the recurrent layers: "gru", "lstm", ...
    hidden_size: int = 320  # H, both directions together
    num_layers: int = 3  # L
    dropout: float = 0.1  # between recurrent layers and before the output layer

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        if not isinstance(self.alphabet, str) or len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ParameterError("alphabet", f"must be a string of at least 2 distinct characters, got {self.alphabet!r}")
        check.integer("n_mels", minimum=4, maximum=512)
        check.integer("channels", minimum=1, maximum=1024)
        cell_class(self.cell)
        check.integer("hidden_size", minimum=2, maximum=8192)
        if self.hidden_size % 2:
            raise ParameterError("hidden_size", f"must be even (half per direction), got {self.hidden_size}")
        check.integer("num_layers", minimum=1, maximum=16)
        check.fraction("dropout")


class SpeechRecognizer(nn.Module):
    """forward(features (T, B, F), lengths (B,)) -> (log-probabilities (T', B, K), lengths (B,))."""

    kind: ClassVar[str] = "speech"

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = config
        C, H = config.channels, config.hidden_size
        self.conv = nn.Sequential(
            nn.Conv2d(1, C, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(C, C, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.project = nn.Linear(C * ((config.n_mels + 3) // 4), H)
        self.rnn = Recurrent(config.cell, H, H // 2, config.num_layers, dropout=config.dropout, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, len(config.alphabet))

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = features.permute(1, 0, 2)[:, None]  # (B, 1, T, F)
        for conv, relu in zip(self.conv[::2], self.conv[1::2]):
            # frames past an utterance's end are zeroed after each layer, as a lone utterance's
            # padding is: its batch-mates' lengths then change nothing of its output
            x = relu(conv(x))  # (B, C, ceil(T / 2), ceil(F / 2))
            lengths = (lengths + 1) // 2
            x = x * (torch.arange(x.shape[2], device=x.device) < lengths[:, None])[:, None, :, None]
        x = x.permute(2, 0, 1, 3).flatten(2)  # (T', B, C F')
        hidden, _ = self.rnn(F.relu(self.project(x)), None, lengths.cpu() if lengths.numel() > 1 else None)
        return F.log_softmax(self.head(self.dropout(hidden)), dim=-1), lengths  # (T', B, K)

    def loss(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """CTC loss per target character, averaged over the batch; targets (sum of target_lengths,)."""
        log_probs, lengths = self(features, lengths)
        # a target longer than its frames allow has no alignment: zero_infinity keeps it from
        # blowing up the batch (it contributes no gradient)
        return F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, zero_infinity=True)

    @torch.no_grad()
    def log_probs(self, features: Tensor) -> Tensor:
        """One utterance's frames (T, F) -> (T', K)."""
        lengths = torch.tensor([len(features)], device=features.device)
        return self(features[:, None], lengths)[0][:, 0]
