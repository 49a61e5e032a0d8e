"""Speech recognition: the acoustic model, learning to transcribe, the commands, resuming after a kill."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import kill_once_saved
from safetensors.torch import load_file

from rnnkit.apps.speech import SpeechConfig, SpeechRecognizer, SpeechTrainConfig, evaluate, train
from rnnkit.apps.speech.data import ALPHABET, Utterance, load_split, speech_corpus, synthesize, write_wav
from rnnkit.apps.speech.features import log_mel
from rnnkit.apps.speech.task import decode_ids, encode_text, transcribe_features

ESPEAK = shutil.which("espeak-ng")


def needs_espeak() -> None:
    if ESPEAK is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run without it has lost these tests
            pytest.fail("espeak-ng is not on PATH (Debian: apt-get install espeak-ng)")
        pytest.skip("needs espeak-ng (Debian: apt-get install espeak-ng)")


def test_the_subsampled_lengths_are_the_convolutions_and_a_padded_batch_reads_as_each_alone():
    torch.manual_seed(0)
    model = SpeechRecognizer(SpeechConfig(n_mels=16, channels=4, hidden_size=8, num_layers=2)).double().eval()
    lengths = torch.tensor([37, 20, 1])
    x = torch.randn(37, 3, 16, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = 0  # padding, as batches are padded
    log_probs, out = model(x, lengths)
    assert out.tolist() == [10, 5, 1]  # ceil(T / 4)
    assert log_probs.shape == (10, 3, len(ALPHABET))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(10, 3, dtype=torch.float64))
    for b, n in enumerate(lengths.tolist()):
        alone = model.log_probs(x[:n, b])
        torch.testing.assert_close(log_probs[: int(out[b]), b], alone)


def test_text_maps_to_the_alphabet_and_back():
    ids = encode_text(ALPHABET, "turn on the tv's light")
    assert 0 not in ids and decode_ids(ALPHABET, ids) == "turn on the tv's light"
    assert SpeechConfig().alphabet[0] == "_"
    with pytest.raises(ValueError, match="hidden_size"):
        SpeechConfig(hidden_size=33)


def _spoken(folder: Path, sentences: list[str], voice: str = "en-us+m3") -> list[Utterance]:
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for i, sentence in enumerate(sentences):
        path = write_wav(folder / f"{i}.wav", synthesize(sentence, voice, rate=170))
        utterances.append(Utterance(path, sentence, voice))
    return utterances


@pytest.mark.slow
def test_the_acoustic_model_learns_a_handful_of_utterances_to_zero_error(tmp_path):
    needs_espeak()
    sentences = ["turn on the kettle", "switch off the lamp", "open the window", "close the door"]
    utterances = _spoken(tmp_path / "wav", sentences)
    torch.set_num_threads(2)
    summary = train(tmp_path / "model", {"train": utterances, "valid": utterances},
                    SpeechConfig(channels=16, hidden_size=128, num_layers=2, dropout=0.0),
                    SpeechTrainConfig(epochs=300, batch_size=4, lr=3e-3, spec_augment=False, wer_utterances=0,
                                      checkpoint_every=None, patience=1000, warp=0.0))
    torch.set_num_threads(1)
    from rnnkit.training import load_model

    model, _ = load_model(tmp_path / "model", kind="speech")
    result = evaluate(model, utterances)
    assert result["cer"] == 0.0 and result["wer"] == 0.0, (result["examples"], summary["best_valid"])


def test_silence_and_empty_audio_give_an_empty_transcript(tmp_path, cli, capsys):
    model = SpeechRecognizer(SpeechConfig(channels=2, hidden_size=4, num_layers=1))
    from rnnkit.apps.speech.task import SpeechTrainConfig as Config
    from rnnkit.training.checkpoint import save_model

    save_model(tmp_path / "model", model, {}, Config())
    write_wav(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32))
    write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    assert cli(["speech", "transcribe", str(tmp_path / "model"), str(tmp_path / "silent.wav"),
                str(tmp_path / "empty.wav"), "--json"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == ["", ""]
    assert "empty or silent" in captured.err
    # another rate and two channels: read, with notes
    stereo = (np.sin(np.linspace(0, 2000, 44100)) * 8000).astype("<i2")
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.stack([stereo, stereo], 1).tobytes())
    assert cli(["speech", "transcribe", str(tmp_path / "model"), str(tmp_path / "stereo.wav")]) == 0
    err = capsys.readouterr().err
    assert "44100" in err and "2 channels" in err


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not audio"), "is not a PCM WAV file"),
    (lambda p: None, "not found"),
])
def test_bad_audio_is_a_one_line_error(tmp_path, cli, capsys, make, message):
    model = SpeechRecognizer(SpeechConfig(channels=2, hidden_size=4, num_layers=1))
    from rnnkit.training.checkpoint import save_model

    save_model(tmp_path / "model", model, {}, SpeechTrainConfig())
    make(tmp_path / "x.wav")
    assert cli(["speech", "transcribe", str(tmp_path / "model"), str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_model_of_another_kind_is_refused(tmp_path, cli, capsys):
    from helpers import animal_corpus

    assert cli(["train", "--data", str(animal_corpus(tmp_path / "a.txt", 200)), "--out", str(tmp_path / "lm"),
                "--epochs", "1", "--hidden", "8", "--layers", "1", "--quiet"]) == 0
    capsys.readouterr()
    write_wav(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32))
    assert cli(["speech", "transcribe", str(tmp_path / "lm"), str(tmp_path / "a.wav")]) == 1
    assert "holds a 'lm' model, not the 'speech' model" in capsys.readouterr().err


@pytest.mark.slow
def test_speech_data_train_evaluate_and_transcribe_end_to_end(tmp_path, cli, capsys):
    needs_espeak()
    data = tmp_path / "data"
    assert cli(["speech", "data", "--out", str(data), "--sentences", "40"]) == 0
    assert "utterances in" in capsys.readouterr().out
    splits = {name: load_split(data / name) for name in ("train", "valid", "test")}
    assert {u.voice for u in splits["train"]}.isdisjoint({u.voice for u in splits["test"]})
    assert cli(["speech", "train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1", "--hidden", "16",
                "--layers", "1", "--channels", "4", "--quiet"]) == 0
    assert "test WER" in capsys.readouterr().out
    assert cli(["speech", "evaluate", str(tmp_path / "m"), "--data", str(data / "test"), "--by-snr", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"wer", "cer", "utterances", "real_time_factor", "by_snr"} <= result.keys()
    assert result["utterances"] == len(splits["test"]) == sum(r["utterances"] for r in result["by_snr"])
    wav = str(splits["test"][0].audio)
    assert cli(["speech", "transcribe", str(tmp_path / "m"), wav, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["audio"] == wav


@pytest.mark.slow
def test_killed_and_resumed_recogniser_ends_with_the_same_weights(tmp_path):
    needs_espeak()
    data = tmp_path / "data"
    speech_corpus(data, 48, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rnnkit", "speech"]
    common = ["train", "--data", str(data), "--epochs", "2", "--checkpoint-every", "3", "--hidden", "8", "--layers", "1",
              "--channels", "2", "--batch-size", "4", "--wer-utterances", "2", "--quiet", "--seed", "2"]
    subprocess.run([*command, *common, "--out", str(tmp_path / "straight")], check=True, env=env, timeout=600)
    victim = subprocess.Popen([*command, *common, "--out", str(tmp_path / "killed")], env=env)
    left = kill_once_saved(victim, tmp_path / "killed", 9)
    assert left < json.loads((tmp_path / "straight" / "results.json").read_text())["steps"]
    subprocess.run([*command, *common, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, timeout=600)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_greedy_transcripts_of_a_batch_are_each_utterances_own():
    torch.manual_seed(0)
    model = SpeechRecognizer(SpeechConfig(channels=4, hidden_size=16, num_layers=1)).eval()
    features = [log_mel(torch.randn(n)) for n in (8000, 16000, 3000)]
    together = transcribe_features(model, features)
    assert together == [transcribe_features(model, [f])[0] for f in features]


@pytest.mark.slow
def test_the_demo_transcribes_the_seed_sentence_both_ways_and_reuses_its_model(tmp_path):
    needs_espeak()
    from helpers import household_model_dir
    from rnnkit.apps.speech.demo import format_report, run_demo

    lm = household_model_dir(tmp_path / "lm")
    said = []
    report = run_demo(tmp_path / "demo", minutes=0.05, say=said.append, sentences=30, lm_dir=lm)
    assert "espeak-ng" in said[0] and report["seed"]["reference"].endswith("turned on the television")
    assert {"greedy", "lm"} == report["test"].keys() and Path(report["seed"]["audio"]).exists()
    text = format_report(report)
    assert "heard (with the LM)" in text and "0 dB" in text
    weights = (tmp_path / "demo" / "model" / "model.safetensors").stat().st_mtime_ns
    assert run_demo(tmp_path / "demo", minutes=0.05, say=said.append, sentences=30, lm_dir=lm)["steps"] == report["steps"]
    assert (tmp_path / "demo" / "model" / "model.safetensors").stat().st_mtime_ns == weights
