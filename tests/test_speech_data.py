"""Speech data: transcripts, WAV files, resampling, noise, espeak-ng synthesis, the corpus, log-mel features."""

from __future__ import annotations

import json
import math
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.apps.speech.data import (ACCENTS, ALPHABET, HELD_OUT_ACCENT, MAX_SECONDS, SAMPLE_RATE, TEST_SNRS,
                                     TEST_VOICES, TRAIN_VOICES, VARIANTS, Utterance, add_noise, load_split, normalize,
                                     read_wav, resample, speech_corpus, synthesize, write_wav)
from rnnkit.apps.speech.features import log_mel, mel_filterbank, spec_augment, warp_frequencies
from rnnkit.errors import RnnkitError


@pytest.fixture
def espeak():
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run without it has lost these tests, say so
            pytest.fail("espeak-ng is not on PATH (Debian: apt-get install espeak-ng)")
        pytest.skip("needs espeak-ng (Debian: apt-get install espeak-ng)")


def _write_pcm(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """A WAV file of integer samples (N, channels) as the wave module writes it."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _one_line_error(call, *args, naming: Path) -> str:
    with pytest.raises(RnnkitError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and str(naming) in message, message
    return message


def _sine(freq: float, seconds: float, rate: int, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


# --------------------------------------------------------------------- transcripts and voices


def test_normalize_keeps_the_alphabet_only():
    assert ALPHABET[0] == "_" and ALPHABET[1] == " " and len(set(ALPHABET)) == len(ALPHABET) == 29
    said = "  Hello,\tWorld!  It\u2019s 42 X-rays\n at the CAFÉ_bar. "
    assert normalize(said) == "hello world it's x rays at the cafe bar"
    assert normalize("") == normalize("123 ?!") == ""
    assert normalize(normalize("Don't   STOP")) == "don't stop"


def test_test_voices_are_unseen_pairings_and_one_unseen_accent():
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    assert len(TRAIN_VOICES) + len(TEST_VOICES) == len(ACCENTS) * len(VARIANTS)
    train = [v.split("+") for v in TRAIN_VOICES]
    assert {a for a, _ in train} == set(ACCENTS) - {HELD_OUT_ACCENT}  # every other accent is heard in training,
    assert {v for _, v in train} == set(VARIANTS)  # and every variant
    assert {f"{HELD_OUT_ACCENT}+{v}" for v in VARIANTS} < set(TEST_VOICES)
    assert any(not v.startswith(HELD_OUT_ACCENT) for v in TEST_VOICES)  # unseen pairings of seen accents


# --------------------------------------------------------------------- WAV files and resampling


def test_wav_round_trip(tmp_path):
    audio = (0.5 * _sine(440, 0.5, SAMPLE_RATE)).astype(np.float32)
    audio[:3] = (1.5, -2.0, 1.0)  # clipped to [-1, 1]
    back, notes = read_wav(write_wav(tmp_path / "a.wav", audio))
    assert notes == [] and back.dtype == np.float32 and back.shape == audio.shape
    np.testing.assert_allclose(back, np.clip(audio, -1, 1), atol=1 / 32767)
    empty, notes = read_wav(write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32)))
    assert empty.shape == (0,) and notes == []
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_read_wav_mixes_down_and_resamples_with_notes(tmp_path):
    left = _sine(1000, 1.0, 44100)
    stereo = (np.stack([left, 0.5 * left], 1) * 16000).astype("<i2")  # (N, 2)
    audio, notes = read_wav(_write_pcm(tmp_path / "stereo.wav", stereo, 44100))
    assert notes == ["mixed down from 2 channels", "resampled from 44100 Hz"]
    assert len(audio) == SAMPLE_RATE
    np.testing.assert_allclose(audio, 0.75 * 16000 / 32768 * _sine(1000, 1.0, SAMPLE_RATE), atol=1e-3)
    # 8-bit (unsigned) and 24-bit PCM
    eight = _write_pcm(tmp_path / "8.wav", np.array([[0], [128], [255]], np.uint8), SAMPLE_RATE, 1)
    np.testing.assert_allclose(read_wav(eight)[0], [-1.0, 0.0, 127 / 128])
    values = np.array([-(2**23), -1, 0, 2**22])
    packed = np.frombuffer(values.astype("<i4").tobytes(), np.uint8).reshape(-1, 4)[:, :3]  # (N, 3) little-endian
    audio, notes = read_wav(_write_pcm(tmp_path / "24.wav", packed.reshape(-1, 1), SAMPLE_RATE, 3))
    np.testing.assert_allclose(audio, values / 2**23)


def test_bad_audio_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio, only text in a file named .wav\n" * 3)
    assert "not a PCM WAV file" in _one_line_error(read_wav, text, naming=text)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert "empty" in _one_line_error(read_wav, empty, naming=empty)
    whole = write_wav(tmp_path / "whole.wav", 0.1 * _sine(300, 1.0, SAMPLE_RATE)).read_bytes()
    header_cut, data_cut = tmp_path / "header.wav", tmp_path / "data.wav"
    header_cut.write_bytes(whole[:30])
    data_cut.write_bytes(whole[: len(whole) // 2])
    assert "cut short" in _one_line_error(read_wav, header_cut, naming=header_cut)
    assert "cut short" in _one_line_error(read_wav, data_cut, naming=data_cut)
    floats = tmp_path / "float.wav"  # IEEE float samples (format 3): not PCM
    floats.write_bytes(whole[:20] + (3).to_bytes(2, "little") + whole[22:])
    assert "not a PCM WAV file" in _one_line_error(read_wav, floats, naming=floats)
    wide = tmp_path / "wide.wav"
    _write_pcm(wide, np.zeros((4, 1), np.uint8), SAMPLE_RATE, 1)
    raw = bytearray(wide.read_bytes())
    raw[32:36] = (5, 0, 40, 0)  # 5-byte samples (block align 5, 40 bits)
    wide.write_bytes(bytes(raw))
    assert "sample width" in _one_line_error(read_wav, wide, naming=wide)
    long = _write_pcm(tmp_path / "long.wav", np.zeros((int(MAX_SECONDS * 8000) + 1, 1), "<i2"), 8000)
    assert f"{MAX_SECONDS:g} s" in _one_line_error(read_wav, long, naming=long)
    for missing in (tmp_path / "missing.wav", tmp_path):
        _one_line_error(read_wav, missing, naming=missing)


@pytest.mark.parametrize("orig", [8000, 11025, 22050, 44100, 48000, 22051])
def test_resample_keeps_a_sine(orig):
    # a sine not periodic in the window: away from the ends (where the FFT's wrap rings), the same sine
    audio = _sine(1234.5, 1.37, orig, phase=0.3).astype(np.float32)
    out = resample(audio, orig)
    assert out.dtype == np.float32 and len(out) == math.ceil(len(audio) * SAMPLE_RATE / orig)
    expected = _sine(1234.5, len(out) / SAMPLE_RATE, SAMPLE_RATE, phase=0.3)[: len(out)]
    np.testing.assert_allclose(out[800:-800], expected[800:-800], atol=1e-3)


def test_resample_removes_what_the_new_rate_cannot_hold():
    audio = (_sine(1000, 1.0, 22050) + _sine(10_000, 1.0, 22050)).astype(np.float32)  # 10 kHz > 8 kHz Nyquist
    out = resample(audio, 22050)
    np.testing.assert_allclose(out, _sine(1000, 1.0, SAMPLE_RATE), atol=1e-4)  # no alias at 6 kHz
    assert resample(np.zeros(0, np.float32), 22050).shape == (0,)


def test_add_noise_hits_the_snr():
    rng = np.random.default_rng(0)
    audio = (0.3 * _sine(200, 1.0, SAMPLE_RATE) * (np.arange(SAMPLE_RATE) > 4000)).astype(np.float32)
    for snr in (0.0, 7.5, 30.0):
        noisy = add_noise(audio, snr, rng)
        noise = noisy.astype(np.float64) - audio
        assert noisy.dtype == np.float32
        assert 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(snr, abs=1e-3)
    a, b = add_noise(audio, 5.0, np.random.default_rng(1)), add_noise(audio, 5.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    silence = np.zeros(100, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 5.0, rng), silence)


# --------------------------------------------------------------------- espeak-ng and the corpus


def test_synthesize_speaks_at_16_khz(espeak):
    audio = synthesize("I picked up the remote controller", "en-us+m3", rate=175, pitch=50)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < len(audio) / SAMPLE_RATE < 4.0  # 6 words at 175 a minute: about 2 s
    assert 0.05 < np.abs(audio).max() <= 1.1
    slow = synthesize("I picked up the remote controller", "en-us+m3", rate=100, pitch=50)
    assert len(slow) > 1.4 * len(audio)
    assert synthesize("", "en-us").shape == (0,)
    with pytest.raises(RnnkitError, match="zz-nonexistent"):
        synthesize("hello", "zz-nonexistent")


def test_every_voice_speaks(espeak):
    for voice in TRAIN_VOICES + TEST_VOICES:
        assert len(synthesize("a", voice)) > 0, voice


def test_speech_corpus_writes_three_splits_with_unseen_test_voices(espeak, tmp_path):
    out = speech_corpus(tmp_path / "speech", sentences=12, seed=1)
    splits = {name: load_split(out / name) for name in ("train", "valid", "test")}
    assert {name: len(u) for name, u in splits.items()} == {"train": 10, "valid": 1, "test": 1}
    texts = [{u.text for u in utterances} for utterances in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # split by sentence
    assert all(u.voice in TRAIN_VOICES for name in ("train", "valid") for u in splits[name])
    assert [u.voice in TEST_VOICES for u in splits["test"]] == [True]
    assert splits["test"][0].snr == TEST_SNRS[0]
    for u in splits["train"]:
        audio, notes = read_wav(u.audio)
        assert notes == [] and 1.0 < len(audio) / SAMPLE_RATE < 20 and u.text == normalize(u.text) != ""
    record = json.loads((out / "train" / "manifest.jsonl").read_text().splitlines()[0])
    assert set(record) == {"audio", "text", "voice", "rate", "pitch", "snr"}
    assert 130 <= record["rate"] <= 200 and 30 <= record["pitch"] <= 70
    # run again: the splits are complete, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    speech_corpus(tmp_path / "speech", sentences=12, seed=1)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*")}


def test_speech_corpus_from_a_text_file(espeak, tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("The cat sat.\n\nthe cat sat\n42\nA dog ran!\nBirds sing.\nFish swim.\nTrees grow.\n")
    out = speech_corpus(tmp_path / "speech", sentences=4, text=text, snr=(5.0, 5.0), jobs=1)
    said = sorted(u.text for name in ("train", "valid", "test") for u in load_split(out / name))
    assert said == ["a dog ran", "birds sing", "fish swim", "the cat sat"]  # the first 4 distinct, normalised
    assert all(u.snr in (None, 5.0) for u in load_split(out / "train"))
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\none\n")
    assert "2 distinct" in _one_line_error(speech_corpus, tmp_path / "x", 10, short, naming=short)
    _one_line_error(speech_corpus, tmp_path / "x", 10, tmp_path / "missing.txt", naming=tmp_path / "missing.txt")


def test_load_split_names_the_bad_line(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(160, np.float32))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "Hello, World"}\n\n')
    assert load_split(tmp_path) == [Utterance(tmp_path / "a.wav", "hello world", None, None)]
    for bad, problem in [("not json", ":1: not a JSON object"), ('{"audio": "a.wav"}', ':1: expected {"audio"'),
                         ('{"audio": "b.wav", "text": "x"}', ":1: audio file not found"), ("", "holds no utterances")]:
        manifest.write_text(bad + "\n")
        assert problem in _one_line_error(load_split, tmp_path, naming=manifest)
    _one_line_error(load_split, tmp_path / "nowhere", naming=tmp_path / "nowhere")


# --------------------------------------------------------------------- features


def test_mel_filterbank_matches_the_htk_formula():
    bank = mel_filterbank()
    assert bank.shape == (80, 201) and bank.dtype == torch.float32
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(8000), 82) / 2595) - 1)
    expected = np.zeros((80, 201))
    for m in range(80):
        for k in range(201):
            f = k * 16000 / 400
            if edges[m] < f <= edges[m + 1]:
                expected[m, k] = (f - edges[m]) / (edges[m + 1] - edges[m])
            elif edges[m + 1] < f < edges[m + 2]:
                expected[m, k] = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
    np.testing.assert_allclose(bank.numpy(), expected, atol=1e-6)
    assert (bank.sum(1) > 0).all()  # no empty filter at 80 mels
    assert mel_filterbank(n_fft=512, n_mels=40, f_min=100, f_max=4000).shape == (40, 257)


def test_log_mel_frames_and_normalisation():
    for n in (0, 1, 159, 160, 1000, 48_007):
        assert log_mel(torch.randn(n)).shape == (n // 160 + 1, 80)
    assert torch.equal(log_mel(torch.zeros(0)), torch.zeros(1, 80))
    tone = (0.3 * _sine(440, 2.0, SAMPLE_RATE)).astype(np.float32)
    audio = torch.from_numpy(add_noise(tone, 10, np.random.default_rng(0)))
    features = log_mel(audio)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(0, correction=0), torch.ones(80), atol=1e-3, rtol=0)
    torch.testing.assert_close(log_mel(10 * audio), features, atol=1e-2, rtol=0)  # the gain is normalised away
    with pytest.raises(RnnkitError, match="audio"):
        log_mel(torch.zeros(2, 100))


def test_spec_augment_masks_bands_and_spans():
    features = torch.randn(200, 80)
    masked = spec_augment(features, torch.Generator().manual_seed(0), freq_width=15, time_width=0.05)
    assert not torch.equal(masked, features) and features.abs().min() > 0  # a copy, the input untouched
    zero_channels = (masked == 0).all(0).sum()
    zero_frames = (masked == 0).all(1).sum()
    assert zero_channels <= 2 * 15 and zero_frames <= 2 * 10
    # every zero is in a masked channel or a masked frame
    assert ((masked == 0) == ((masked == 0).all(0) | (masked == 0).all(1)[:, None])).all()
    again = spec_augment(features, torch.Generator().manual_seed(0), freq_width=15, time_width=0.05)
    assert torch.equal(masked, again)
    assert torch.equal(spec_augment(features, torch.Generator(), freq_masks=0, time_masks=0), features)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_warp_frequencies_moves_a_formant_to_the_channel_alpha_times_lower(alpha):
    """A peak in channel 40 (centre f_40) lands, warped by alpha, in the channel j whose alpha f_j is
    nearest f_40. The centres are read off a filterbank with 1 Hz bins, not from the warp's formula."""
    centres = mel_filterbank(n_fft=16_000).argmax(1).double()  # (80,) Hz
    features = torch.zeros(3, 80)
    features[:, 40] = 1.0
    warped = warp_frequencies(features, alpha)
    want = int((alpha * centres - centres[40]).abs().argmin())
    assert (warped.argmax(1) == want).all() and want != 40
    torch.testing.assert_close(warp_frequencies(features, 1.0), features, atol=1e-6, rtol=0)
