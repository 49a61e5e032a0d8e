"""Spoken sentences: synthesised with espeak-ng across voices and noise levels, or the user's WAV files.

A speech set is a folder per split, each holding its WAV files and a JSON-lines manifest:

    DIR/{train,valid,test}/manifest.jsonl   {"audio": "000123.wav", "text": "i grabbed the tea bag ...",
                                             "voice": "en-gb+f2", "rate": 164, "pitch": 41, "snr": 12.5}
    DIR/{train,valid,test}/000123.wav       16 kHz, 16-bit PCM, mono

`speech_corpus` speaks household sentences (or the lines of a text file), split 90/5/5 by
sentence, so that no test sentence is heard in training. Train and valid use TRAIN_VOICES, test
TEST_VOICES, voices never heard in training (see `TEST_VOICES` for the rule). Each utterance has its
own speaking rate (130-200 words a minute) and pitch (30-70 of espeak's 0-99), and noise: in
train and valid 20% of utterances are clean and the rest have an SNR uniform in `snr`; the test
split cycles through TEST_SNRS, so that error rates can be reported by SNR.

Transcripts use ALPHABET: lower-case letters, space and the apostrophe; index 0 is CTC's blank.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import shutil
import subprocess
import unicodedata
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...demos.household.corpus import generate
from ...errors import ParameterError, RnnkitError
from ...io import atomic_write, read_jsonl

ALPHABET = "_ abcdefghijklmnopqrstuvwxyz'"  # "_" is CTC's blank (index 0), never in a transcript
SAMPLE_RATE = 16_000
MAX_SECONDS = 60.0  # longer audio is refused: one utterance is read, and its features held, whole
ESPEAK = "espeak-ng"
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.jsonl"
MAX_WORDS = 100  # a longer line would last more than MAX_SECONDS at the slowest rate (130 words a minute)

# espeak-ng's English accents (all in espeak-ng 1.49 and later) and its voice variants
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELD_OUT_ACCENT = "en-029"  # Caribbean


def _held_out(accent: int, variant: int) -> bool:
    # every variant of one accent, and 2 of the 12 variants of each other accent, each variant in
    # exactly one of them: training hears every other accent and every variant, never these pairings
    return ACCENTS[accent] == HELD_OUT_ACCENT or (accent + variant) % 6 == 0


# 60 voices for train and valid, 24 for test ("accent+variant", as espeak-ng's -v reads them)
TRAIN_VOICES = [f"{a}+{v}" for i, a in enumerate(ACCENTS) for j, v in enumerate(VARIANTS) if not _held_out(i, j)]
TEST_VOICES = [f"{a}+{v}" for i, a in enumerate(ACCENTS) for j, v in enumerate(VARIANTS) if _held_out(i, j)]

RATES, PITCHES = (130, 200), (30, 70)
CLEAN = 0.2  # the share of training utterances without noise
TEST_SNRS = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, None)  # dB; None: clean


@dataclass(frozen=True)
class Utterance:
    """One line of a split's manifest."""

    audio: Path
    text: str  # normalised
    voice: str | None = None  # espeak-ng's voice; None for recorded speech
    snr: float | None = None  # dB of the added noise; None: none added


def normalize(text: str) -> str:
    """A transcript in ALPHABET: lower case, accents stripped ("café" -> "cafe"), dashes to spaces,
    typographic apostrophes to "'", other characters outside it (digits, punctuation) dropped,
    white space collapsed to single spaces."""
    text = unicodedata.normalize("NFKD", text.lower()).replace("\u2019", "'")
    text = re.sub(r"[\s_\-\u2010-\u2015]+", " ", text)
    return " ".join("".join(c for c in text if c in _KEPT).split())


_KEPT = frozenset(ALPHABET[1:])


# --------------------------------------------------------------------- WAV files


def _pcm_samples(w: wave.Wave_read, raw: bytes, name: str) -> np.ndarray:
    """Float32 samples in [-1, 1), (frames, channels), of a WAV reader's raw frames."""
    width, channels = w.getsampwidth(), w.getnchannels()
    raw = raw[: len(raw) // (width * channels) * width * channels]  # without a last partial frame
    if width == 3:  # 24-bit: shift each sample into the top three bytes of an int32
        raw, width = np.pad(np.frombuffer(raw, np.uint8).reshape(-1, 3), ((0, 0), (1, 0))).tobytes(), 4
    if width not in (1, 2, 4):
        raise RnnkitError(f"{name} has an unsupported sample width of {width} bytes (8, 16, 24 or 32-bit PCM is read)")
    samples = np.frombuffer(raw, {1: np.uint8, 2: "<i2", 4: "<i4"}[width]).astype(np.float32)
    if width == 1:  # 8-bit PCM is unsigned
        samples -= 128
    return (samples / 2 ** (8 * width - 1)).reshape(-1, channels)


def resample(audio: np.ndarray, orig: int, new: int = SAMPLE_RATE) -> np.ndarray:
    """Audio (N,) at `orig` Hz resampled to `new` Hz: ceil(N new / orig) samples, float32.

    In the frequency domain: the spectrum is cut (or padded with zeros) at the lower of the two
    Nyquist frequencies and read back at the new rate, an ideal low-pass for any ratio of rates, in
    O(N log N). The audio is first padded with zeros to a length the ratio maps to a whole number
    of samples, so that the time scale is exact. The FFT treats the audio as periodic, so the last
    milliseconds ring into the first: recordings start and end in near-silence, espeak-ng's in silence."""
    if orig == new or len(audio) == 0:
        return audio.astype(np.float32)
    step = orig // math.gcd(orig, new)  # a multiple of it lasts a whole number of samples at both rates
    padded = -(-len(audio) // step) * step
    m = padded * new // orig
    spectrum = np.fft.rfft(audio.astype(np.float64), padded)[: m // 2 + 1]
    resampled = np.fft.irfft(spectrum, m) * (m / padded)  # irfft pads the spectrum with zeros when upsampling
    return resampled[: -(-len(audio) * new // orig)].astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray) -> Path:
    """16 kHz mono 16-bit PCM, atomically; samples are clipped to [-1, 1]."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    with atomic_write(path) as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return Path(path)


def read_wav(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Float32 mono 16 kHz samples (N,) of a PCM WAV file, and notes of what reading it changed
    ("resampled from 44100 Hz", "mixed down from 2 channels"). A WAV file of no samples gives an
    empty array; RnnkitError naming the file if it is missing, empty, not a PCM WAV file, cut short
    (fewer samples than its header says) or longer than MAX_SECONDS."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, frames = w.getframerate(), w.getnframes()
            limit = int(MAX_SECONDS * rate)
            # read at most one sample past the limit; a header that promises more than the limit
            # but holds less is a stream's placeholder length (espeak-ng --stdout writes one)
            samples = _pcm_samples(w, w.readframes(min(frames, limit + 1)), str(path))
    except FileNotFoundError:
        raise RnnkitError(f"audio file not found: {path}") from None
    except IsADirectoryError:
        raise RnnkitError(f"{path} is a folder, expected a WAV file") from None
    except EOFError:
        raise RnnkitError(f"{path} is empty, not a WAV file" if path.stat().st_size == 0
                          else f"{path} is cut short: its WAV header ends early") from None
    except wave.Error as e:
        raise RnnkitError(f"{path} is not a PCM WAV file ({e})") from None
    if len(samples) > limit:
        raise RnnkitError(f"{path} is longer than {MAX_SECONDS:g} s, the longest audio this reads")
    if len(samples) < frames <= limit:
        raise RnnkitError(f"{path} is cut short: {len(samples)} of the {frames} samples its header promises")
    notes = []
    if samples.shape[1] > 1:
        notes.append(f"mixed down from {samples.shape[1]} channels")
    audio = samples.mean(1)  # (N,)
    if rate != SAMPLE_RATE:
        notes.append(f"resampled from {rate} Hz")
        audio = resample(audio, rate)
    return audio, notes


# --------------------------------------------------------------------- synthesis and noise


def check_espeak() -> str:
    """The path of espeak-ng, or RnnkitError saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise RnnkitError("espeak-ng is not installed: apt-get install espeak-ng")
    return path


def synthesize(text: str, voice: str, rate: int = 160, pitch: int = 50) -> np.ndarray:
    """`text` spoken by espeak-ng's `voice` ("en-us+m3") at `rate` words a minute and `pitch`
    (0-99): float32 samples (N,) at 16 kHz (espeak-ng speaks at 22,050 Hz)."""
    if not text.strip():  # espeak-ng writes nothing at all, not even a header
        return np.zeros(0, np.float32)
    command = [check_espeak(), "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "--stdout", "--stdin"]
    done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True)
    if done.returncode != 0 or not done.stdout:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no audio"]
        problem = said[-1].removeprefix("Error: ")
        raise RnnkitError(f"espeak-ng could not speak with voice {voice!r}: {problem}")
    with wave.open(io.BytesIO(done.stdout), "rb") as w:
        # the header's length is a placeholder (the output was a stream): read what is there
        audio = _pcm_samples(w, w.readframes(w.getnframes()), "espeak-ng's output").mean(1)
        return resample(audio, w.getframerate())


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus noise at exactly `snr_db`: 10 log10(P_audio / P_noise) = snr_db, with P the
    mean square over the whole utterance (its pauses included). The noise mixes white noise and
    brown noise (power falling as 1/f^2 above 50 Hz: hum, rumble, wind) in a random proportion."""
    n = len(audio)
    power = float(np.mean(np.square(audio, dtype=np.float64))) if n else 0.0
    if power == 0.0:  # nothing to measure the noise against
        return audio.astype(np.float32)
    white = rng.standard_normal(n)
    size = 1 << (n - 1).bit_length()  # a fast FFT length; the noise is stationary, any n of it will do
    shaping = np.maximum(np.fft.rfftfreq(size, 1 / SAMPLE_RATE), 50.0)  # amplitude 1/f: power 1/f^2
    brown = np.fft.irfft(np.fft.rfft(rng.standard_normal(size)) / shaping, size)[:n]
    mix = rng.uniform()
    noise = math.sqrt(mix) * white / _rms(white) + math.sqrt(1 - mix) * brown / _rms(brown)
    noise *= math.sqrt(power / 10 ** (snr_db / 10) / np.mean(np.square(noise)))
    return (audio + noise).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(np.square(x)))), 1e-12)


# --------------------------------------------------------------------- corpus


def _sentences(text: Path | None, sentences: int, seed: int) -> list[str]:
    """Up to `sentences` distinct normalised sentences: household ones, or the lines of `text`."""
    if text is None:
        lines = [s.text for s in generate(sentences, seed=seed)]
    else:
        try:
            lines = Path(text).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise RnnkitError(f"text file not found: {text}") from None
        except IsADirectoryError:
            raise RnnkitError(f"{text} is a folder, expected a text file") from None
        except UnicodeDecodeError:
            raise RnnkitError(f"{text} is not UTF-8 text") from None
    kept: dict[str, None] = {}  # distinct, in order: a sentence in two splits would leak the test
    for n, line in enumerate(lines, 1):
        if len(kept) == sentences:
            break
        if words := len(sentence := normalize(line).split()):
            if words > MAX_WORDS:
                raise RnnkitError(f"{text}:{n}: a line of {words} words, more than the {MAX_WORDS} an "
                                  "utterance holds")
            kept[" ".join(sentence)] = None
    return list(kept)


def _plan(texts: list[str], voices: list[str], snrs: list[float | None], rng: random.Random) -> list[dict[str, Any]]:
    return [{"audio": f"{i:06d}.wav", "text": text, "voice": rng.choice(voices), "rate": rng.randint(*RATES),
             "pitch": rng.randint(*PITCHES), "snr": snr} for i, (text, snr) in enumerate(zip(texts, snrs))]


def speech_corpus(out: str | Path, sentences: int = 3000, text: str | Path | None = None, seed: int = 0,
                  snr: tuple[float, float] = (0.0, 30.0), jobs: int = 2) -> Path:
    """Speak `sentences` sentences (household ones, or the first distinct lines of `text`) into
    OUT/{train,valid,test}, 90/5/5, with `jobs` espeak-ng processes at a time; returns `out`.

    Everything is drawn from `seed`, so a run is repeatable; a split whose manifest (written last)
    already lists what this run would write is kept, so a run cut short redoes only what is missing."""
    if sentences < 3:
        raise ParameterError("sentences", f"must be at least 3 (one for each split), got {sentences}")
    if not snr[0] <= snr[1]:
        raise ParameterError("snr", f"must be a range (low, high), got {snr}")
    if jobs < 1:
        raise ParameterError("jobs", f"must be at least 1, got {jobs}")
    check_espeak()
    texts = _sentences(Path(text) if text is not None else None, sentences, seed)
    if len(texts) < 3:
        raise RnnkitError(f"{text or 'the household corpus'} has {len(texts)} distinct sentences, at least 3 are "
                          "needed (one for each split)")
    rng = random.Random(seed)
    rng.shuffle(texts)
    held = max(1, round(0.05 * len(texts)))
    parts = {"train": texts[2 * held :], "valid": texts[:held], "test": texts[held : 2 * held]}
    for s, name in enumerate(SPLITS):
        n = len(parts[name])
        if name == "test":
            snrs = [TEST_SNRS[i % len(TEST_SNRS)] for i in range(n)]
            records = _plan(parts[name], TEST_VOICES, snrs, rng)
        else:
            snrs = [None if rng.random() < CLEAN else round(rng.uniform(*snr), 2) for _ in range(n)]
            records = _plan(parts[name], TRAIN_VOICES, snrs, rng)
        _speak_split(Path(out) / name, records, [seed, s], jobs)
    return Path(out)


def _speak_split(folder: Path, records: list[dict[str, Any]], seed: list[int], jobs: int) -> None:
    manifest = folder / MANIFEST
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if manifest.is_file() and manifest.read_text(encoding="utf-8") == lines:
        return

    def speak(i: int) -> None:
        r = records[i]
        audio = synthesize(r["text"], r["voice"], r["rate"], r["pitch"])
        if r["snr"] is not None:  # each utterance's own noise: the same whatever the threads' order
            audio = add_noise(audio, r["snr"], np.random.default_rng([*seed, i]))
        peak = float(np.abs(audio).max(initial=0.0))
        write_wav(folder / r["audio"], audio / max(1.0, peak / 0.99))  # scaled, not clipped: the SNR stays

    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:  # the threads wait on espeak-ng processes
        try:
            for _ in pool.map(speak, range(len(records))):
                pass
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    with atomic_write(manifest, "w") as f:
        f.write(lines)


def load_split(folder: str | Path) -> list[Utterance]:
    """The utterances of FOLDER/manifest.jsonl (or of a manifest file), audio paths relative to
    its folder, texts normalised; RnnkitError naming the file and line of a bad line or a missing
    audio file."""
    path = Path(folder)
    path = path / MANIFEST if path.is_dir() else path
    utterances = []
    for n, record in read_jsonl(path, "manifest"):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("audio", "text")):
            raise RnnkitError(f'{path}:{n}: expected {{"audio": "x.wav", "text": "..."}}')
        voice, snr = record.get("voice"), record.get("snr")
        if not (voice is None or isinstance(voice, str)) or not (snr is None or isinstance(snr, (int, float))):
            raise RnnkitError(f'{path}:{n}: "voice" must be a string and "snr" a number or null')
        audio = path.parent / record["audio"]
        if not audio.is_file():
            raise RnnkitError(f"{path}:{n}: audio file not found: {audio}")
        utterances.append(Utterance(audio, normalize(record["text"]), voice, None if snr is None else float(snr)))
    if not utterances:
        raise RnnkitError(f"{path} holds no utterances")
    return utterances
