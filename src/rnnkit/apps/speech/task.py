"""Training and using a speech recogniser: log-mel features in memory, the CTC task on the generic
loop, transcription (greedy, or prefix beam search with a language model fused in), and word and
character error rates (jiwer)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ...configs import FieldChecks
from ...errors import RnnkitError
from ...io import write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model
from ...training.loop import Draws, Task, TrainConfig, fit, resolve_device
from ..translate.data import bucketed
from . import ctc
from .data import SAMPLE_RATE, Utterance, read_wav
from .features import log_mel, spec_augment, warp_frequencies
from .model import SpeechConfig, SpeechRecognizer


@dataclass(frozen=True)
class SpeechTrainConfig(TrainConfig):
    """How to train a recogniser: the loop's settings with defaults for it, and SpecAugment's."""

    what: ClassVar[str] = "training config"

    epochs: int = 40
    batch_size: int = 32  # utterances per batch, of similar lengths
    optimizer: str = "adamw"
    lr: float | None = 2e-3
    clip: float | None = 5.0
    lr_decay: float = 0.5
    patience: int = 1  # evaluations without improvement before the rate is halved
    eval_batch_size: int = 64
    warp: float = 0.1  # each training utterance's frequencies scaled by alpha ~ U(1 - warp, 1 + warp) (VTLP)
    spec_augment: bool = True  # frequency and time masks on the training features
    wer_utterances: int = 200  # validation utterances transcribed greedily at each evaluation (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check = FieldChecks(self)
        check.fraction("warp")
        check.boolean("spec_augment")
        check.integer("wer_utterances", minimum=0)


def encode_text(alphabet: str, text: str) -> list[int]:
    index = {c: i for i, c in enumerate(alphabet)}
    return [index[c] for c in text if c in index and index[c] != 0]


def decode_ids(alphabet: str, ids: Sequence[int]) -> str:
    return "".join(alphabet[i] for i in ids)


def features_of(audio: np.ndarray, n_mels: int) -> Tensor:
    return log_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), n_mels)


def load_features(utterances: Sequence[Utterance], n_mels: int) -> list[Tensor]:
    """Every utterance's log-mel frames (T, n_mels), read once: a few hundred MB for thousands of
    utterances, and no decoding work left for the training steps."""
    return [features_of(read_wav(u.audio)[0], n_mels) for u in utterances]


def _pad(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(T, B, F) padded with zeros (the normalised mean) and the lengths (B,)."""
    lengths = torch.tensor([len(f) for f in features])
    return torch.nn.utils.rnn.pad_sequence(list(features)), lengths


class SpeechTask(Task):
    """Utterances in batches of similar length, reshuffled every epoch, warped in frequency and
    SpecAugmented in training."""

    def __init__(self, splits: dict[str, list[Utterance]], model_config: SpeechConfig, config: SpeechTrainConfig
                 ) -> None:
        if not splits["train"] or not splits["valid"]:
            raise RnnkitError("speech recognition needs training and validation utterances")
        self.config, alphabet = config, model_config.alphabet
        self.features = load_features(splits["train"], model_config.n_mels)
        self.targets = [encode_text(alphabet, u.text) for u in splits["train"]]
        self.valid = splits["valid"]
        self.valid_features = load_features(self.valid, model_config.n_mels)
        self.valid_targets = [encode_text(alphabet, u.text) for u in self.valid]
        self.groups = bucketed([(0, len(f)) for f in self.features], config.batch_size, config.seed)
        self.epoch, self.order = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.order = epoch, None

    def batches(self, device: torch.device) -> Draws:
        return Draws(len(self.groups), lambda i: self._batch(i, device))

    def _batch(self, i: int, device: torch.device) -> tuple[Tensor, ...]:
        if self.order is None:  # another order every epoch, the same on a resumed one
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
            self.order = torch.randperm(len(self.groups), generator=generator).tolist()
        group = self.groups[self.order[i]]
        features = [self.features[j] for j in group]
        # warps and masks drawn from (seed, epoch, batch): a resumed run draws the same
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + self.epoch) * 100_003 + i)
        if self.config.warp:
            alphas = 1 + self.config.warp * (2 * torch.rand(len(features), generator=generator, dtype=torch.float64) - 1)
            features = [warp_frequencies(f, float(alpha)) for f, alpha in zip(features, alphas)]
        if self.config.spec_augment:
            features = [spec_augment(f, generator) for f in features]
        return _batch(features, [self.targets[j] for j in group], device)

    def loss(self, model: SpeechRecognizer, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, None]:
        return model.loss(*batch), None

    def count(self, batch: tuple[Tensor, ...]) -> int:
        return int(batch[1].sum())  # frames heard

    def evaluate(self, model: SpeechRecognizer) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        step = self.config.eval_batch_size
        for start in range(0, len(self.valid), step):
            batch = _batch(self.valid_features[start : start + step], self.valid_targets[start : start + step], device)
            total += model.loss(*batch).item() * len(batch[3])  # a mean over the batch's utterances
            count += len(batch[3])
        metrics = {"loss": total / count}
        if self.config.wer_utterances:
            shown = self.valid[: self.config.wer_utterances]
            hypotheses = transcribe_features(model, self.valid_features[: len(shown)])
            metrics.update(error_rates(hypotheses, [u.text for u in shown]))
        return metrics


def _batch(features: Sequence[Tensor], targets: Sequence[list[int]], device: torch.device) -> tuple[Tensor, ...]:
    x, lengths = _pad(features)
    flat = torch.tensor([t for target in targets for t in target], dtype=torch.long)
    return x.to(device), lengths.to(device), flat.to(device), torch.tensor([len(t) for t in targets]).to(device)


def train(directory: str | Path, splits: dict[str, list[Utterance]], model_config: SpeechConfig,
          config: SpeechTrainConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train a recogniser on the train split into the model directory; return the loop's summary."""
    resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = SpeechRecognizer(model_config)
    task = SpeechTask(splits, model_config, config)
    return fit(model, task, config, directory, assets={}, resume=resume, callbacks=callbacks)


# --------------------------------------------------------------------- transcribing


@torch.no_grad()
def transcribe_features(model: SpeechRecognizer, features: Sequence[Tensor], beam: int = 1,
                        lm: ctc.LanguageModelScorer | None = None, lm_weight: float = 0.0, word_bonus: float = 0.0,
                        batch_size: int = 32) -> list[str]:
    """Transcripts of utterances' frames: greedy (beam 1, no LM), or CTC prefix beam search with
    the language model fused in."""
    device = next(model.parameters()).device
    alphabet = model.config.alphabet
    order = sorted(range(len(features)), key=lambda i: len(features[i]))
    found: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        x, lengths = _pad([features[i] for i in group])
        log_probs, lengths = model(x.to(device), lengths.to(device))  # (T', B, K)
        if beam == 1 and lm is None:
            labels = ctc.greedy_batch(log_probs, lengths)
        else:
            labels = [ctc.prefix_beam_search(log_probs[: int(lengths[b]), b].cpu(), alphabet, beam, lm=lm,
                                             lm_weight=lm_weight, word_bonus=word_bonus) for b in range(len(group))]
        for i, ids in zip(group, labels):
            found[i] = " ".join(decode_ids(alphabet, ids).split())
    return [found[i] for i in range(len(features))]


def error_rates(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Word and character error rates in percent (jiwer), over all utterances together."""
    import jiwer

    # jiwer refuses empty references; an utterance with nothing to say counts its hypothesis as insertions
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return {"wer": 0.0, "cer": 0.0}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": 100 * jiwer.wer(refs, hyps), "cer": 100 * jiwer.cer(refs, hyps)}


def evaluate(model: SpeechRecognizer, utterances: Sequence[Utterance], beam: int = 1,
             lm: ctc.LanguageModelScorer | None = None, lm_weight: float = 0.0, word_bonus: float = 0.0,
             by_snr: bool = False) -> dict[str, Any]:
    """WER and CER of the utterances' transcripts (and by SNR), and the real-time factor."""
    features = load_features(utterances, model.config.n_mels)
    seconds = sum(len(f) for f in features) * 0.01  # 10 ms frames
    start = time.perf_counter()
    hypotheses = transcribe_features(model, features, beam, lm, lm_weight, word_bonus)
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {**error_rates(hypotheses, [u.text for u in utterances]), "utterances": len(utterances),
                              "real_time_factor": elapsed / max(seconds, 1e-9), "beam": beam,
                              "lm_weight": lm_weight if lm is not None else 0.0}
    if by_snr:
        levels = sorted({u.snr for u in utterances}, key=lambda s: math.inf if s is None else s)
        result["by_snr"] = []
        for level in levels:
            picked = [i for i, u in enumerate(utterances) if u.snr == level]
            rates = error_rates([hypotheses[i] for i in picked], [utterances[i].text for i in picked])
            result["by_snr"].append({"snr": level, "utterances": len(picked), **rates})
    result["examples"] = [{"reference": u.text, "hypothesis": h} for u, h in list(zip(utterances, hypotheses))[:5]]
    return result


def transcribe_file(model: SpeechRecognizer, path: Path, beam: int = 1, lm: ctc.LanguageModelScorer | None = None,
                    lm_weight: float = 0.0, word_bonus: float = 0.0) -> tuple[str, list[str]]:
    """The transcript of a WAV file and the notes its reading made (resampled, mixed down)."""
    audio, notes = read_wav(path)
    if len(audio) < SAMPLE_RATE // 50 or float(np.abs(audio).max(initial=0.0)) < 1e-4:  # under 20 ms, or silence
        return "", notes + ["the audio is empty or silent"]
    [text] = transcribe_features(model, [features_of(audio, model.config.n_mels)], beam, lm, lm_weight, word_bonus)
    return text, notes


def finish_run(directory: str | Path, splits: dict[str, list[Utterance]], summary: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the best model on the test split (greedy, by SNR); write and return results.json,
    whose presence marks a finished run."""
    model, _ = load_model(directory, kind=SpeechRecognizer.kind)
    results = {**summary, "test": evaluate(model, splits["test"], by_snr=True)} if splits.get("test") else dict(summary)
    write_json(Path(directory) / "results.json", results)
    return results
