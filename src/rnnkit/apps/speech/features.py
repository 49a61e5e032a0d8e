r"""What the speech model reads: log-mel frames of 16 kHz audio, and SpecAugment masks on them.

    audio (N,) --stft: 25 ms Hann windows every 10 ms--> |X|^2 (201, T) --mel filters--> (80, T)
          --log(x + 1e-6), then each channel to mean 0 and std 1 over the utterance--> (T, 80)

T = N // 160 + 1 for every N (the STFT is centred, its edges padded with zeros); empty audio is
read as one silent sample, so it gives one frame of zeros: a CTC model always has a frame to read.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ParameterError

N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_MELS = 80


def hz_to_mel(f: float | Tensor) -> float | Tensor:
    """The HTK mel scale: mel(f) = 2595 log10(1 + f / 700), of a number or of each element."""
    return 2595.0 * (torch.log10(1.0 + f / 700.0) if isinstance(f, Tensor) else math.log10(1.0 + f / 700.0))


def mel_edges(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """The n_mels + 2 edges (Hz, float64) of the mel filters, evenly spaced on the mel scale from
    mel(f_min) to mel(f_max) and back in Hz through f = 700 (10^(m / 2595) - 1): filter m rises
    from edge m to its centre, edge m + 1, and falls to edge m + 2."""
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def mel_filterbank(n_fft: int = N_FFT, n_mels: int = N_MELS, sample_rate: int = 16_000, f_min: float = 0.0,
                   f_max: float = 8_000.0) -> Tensor:
    r"""Triangular filters on the HTK mel scale, (n_mels, n_fft // 2 + 1), float32.

    n_mels + 2 edges e_0 < ... < e_{n_mels+1} lie evenly on the mel scale from mel(f_min) to
    mel(f_max), back in Hz through f = 700 (10^(m / 2595) - 1). Filter m rises from 0 at e_m to 1
    at e_{m+1} and falls to 0 at e_{m+2}; it is read at the FFT bins' frequencies
    f_k = k sample_rate / n_fft:

        H_m(f_k) = max(0, min((f_k - e_m) / (e_{m+1} - e_m), (e_{m+2} - f_k) / (e_{m+2} - e_{m+1})))

    Heights are 1 (no area normalisation): log_mel normalises each channel anyway.
    """
    edges = mel_edges(n_mels, f_min, f_max)  # (n_mels + 2,) Hz
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # (K,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins - lower) / (centre - lower)  # (n_mels, K)
    falling = (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp(min=0).float()


def log_mel(audio: Tensor, n_mels: int = N_MELS) -> Tensor:
    """Normalised log-mel features (T, n_mels) of 16 kHz audio (N,), T = N // 160 + 1."""
    if audio.dim() != 1:
        raise ParameterError("audio", f"must be one channel of samples (N,), got shape {tuple(audio.shape)}")
    audio = audio.float() if audio.numel() else audio.new_zeros(1, dtype=torch.float32)
    window = torch.hann_window(N_FFT, device=audio.device)
    spectrum = torch.stft(audio, N_FFT, HOP, window=window, center=True, pad_mode="constant",
                          return_complex=True)  # (K, T)
    power = spectrum.real.square() + spectrum.imag.square()
    mel = mel_filterbank(n_mels=n_mels).to(audio.device) @ power  # (n_mels, T)
    features = torch.log(mel + 1e-6).T  # (T, n_mels)
    # per utterance: a louder or quieter recording, or another microphone's colouring, gives the same input
    mean = features.mean(0, keepdim=True)
    std = features.std(0, correction=0, keepdim=True)
    return (features - mean) / (std + 1e-5)


def warp_frequencies(features: Tensor, alpha: float, f_max: float = 8_000.0) -> Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton 2013) of log-mel features (T, F): channel m,
    centred at f_m Hz, reads what `features` hold at alpha f_m (linearly between channels, the last
    channel past the top), as the same speech from a vocal tract 1 / alpha times as long sounds.
    The centres are `log_mel`'s (`mel_filterbank` from 0 Hz to f_max)."""
    F = features.shape[-1]
    step = hz_to_mel(f_max) / (F + 1)  # mel between neighbouring centres
    centres = mel_edges(F, 0.0, f_max)[1:-1]  # (F,) Hz
    # channel m's centre lies at mel (m + 1) step: alpha f_m lies at channel mel(alpha f_m) / step - 1
    position = (hz_to_mel(alpha * centres) / step - 1).clamp(0, F - 1)  # (F,) channels
    below = position.floor().long().clamp(max=F - 2)
    weight = (position - below).to(features.dtype)
    return features[..., below] * (1 - weight) + features[..., below + 1] * weight


def spec_augment(features: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 15,
                 time_masks: int = 2, time_width: float = 0.05) -> Tensor:
    """A copy of features (T, F) with SpecAugment's masks (Park et al. 2019, section 2; no time warp):
    `freq_masks` bands of f ~ U{0..freq_width} channels and `time_masks` spans of
    t ~ U{0..time_width * T} frames, each at a uniform position, set to 0, the normalised mean."""
    T, F = features.shape
    out = features.clone()

    def span(size: int, width: int) -> slice:
        w = int(torch.randint(0, min(width, size) + 1, (), generator=generator))
        start = int(torch.randint(0, size - w + 1, (), generator=generator))
        return slice(start, start + w)

    for _ in range(freq_masks):
        out[:, span(F, freq_width)] = 0
    for _ in range(time_masks):
        out[span(T, int(time_width * T))] = 0
    return out
