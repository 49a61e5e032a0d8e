"""`rnnkit speech demo`: synthesised speech, a few minutes of training, and a language model that
hears what the noise hides.

Speaks household sentences with espeak-ng (once, in OUT/data), trains a recogniser (once: kept in
OUT/model), takes the household word language model of `rnnkit demo` (trained once into
OUT/lm/model), and then transcribes the seed's sentence, spoken by a voice training never heard,
in noise, greedily and with the language model fused in; and the test split by SNR, both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...demos.household import corpus as household
from ...demos.household.demo import trained_model
from ...io import read_json, write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model, pending_training
from .ctc import lm_scorer
from .data import TEST_VOICES, add_noise, load_split, normalize, speech_corpus, synthesize, write_wav
from .model import SpeechConfig, SpeechRecognizer
from .task import SpeechTrainConfig, evaluate, finish_run, train, transcribe_file

SEED_SNR = 5.0  # dB: noisy enough that the acoustic model alone stumbles
LM_WEIGHT, WORD_BONUS, BEAM = 0.2, 2.0, 16  # tuned on the validation split (docs/speech.md)


def run_demo(out: Path, minutes: float = 8.0, retrain: bool = False, callback: Callback | None = None,
             say: Callable[[str], None] = print, sentences: int = 2500, lm_dir: Path | None = None
             ) -> dict[str, Any] | None:
    """Run the demo into `out`; the report (also in OUT/demo.json), or None if training was interrupted.
    `lm_dir`: a word or char language model to fuse in instead of the household one."""
    data, directory = out / "data", out / "model"
    if not (data / "test" / "manifest.jsonl").exists():
        say(f"speaking {sentences} household sentences with espeak-ng ...")
        speech_corpus(data, sentences)
    splits = {name: load_split(data / name) for name in ("train", "valid", "test")}
    callbacks = [] if callback is None else [callback]
    if (resume := pending_training(directory, retrain, say)) is not None:
        model_config = load_model(directory, kind=SpeechRecognizer.kind)[0].config if resume else SpeechConfig()
        config = SpeechTrainConfig(epochs=1000, max_minutes=minutes, eval_every=300, wer_utterances=100)
        summary = train(directory, splits, model_config, config, resume=resume, callbacks=callbacks)
        if summary["stopped"] == "interrupted":
            return None
        finish_run(directory, splits, summary)
    if lm_dir is None:
        say("the household language model (`rnnkit demo`'s) ...")
        lm_dir = trained_model(out / "lm", retrain=retrain, callback=callback)
        if lm_dir is None:
            return None
    results = read_json(directory / "results.json", "the demo model's results.json")
    model, _ = load_model(directory, kind=SpeechRecognizer.kind)
    lm = lm_scorer(*load_model(lm_dir, kind="lm"))

    seed = household.SEED_SENTENCE
    audio = synthesize(seed, TEST_VOICES[0], rate=165, pitch=50)
    wav = out / "seed.wav"
    write_wav(wav, add_noise(audio, SEED_SNR, np.random.default_rng(0)))
    greedy = transcribe_file(model, wav)[0]
    fused = transcribe_file(model, wav, BEAM, lm, LM_WEIGHT, WORD_BONUS)[0]

    # the greedy figures are finish_run's, in results.json
    table = {"greedy": results["test"],
             "lm": evaluate(model, splits["test"], BEAM, lm, LM_WEIGHT, WORD_BONUS, by_snr=True)}
    history = results.get("history", [])
    report = {
        "utterances": {k: len(v) for k, v in splits.items()}, "steps": results["steps"],
        "training_minutes": history[-1]["elapsed_s"] / 60 if history else None,
        "seed": {"reference": normalize(seed), "voice": TEST_VOICES[0], "snr": SEED_SNR, "audio": str(wav),
                 "greedy": greedy, "lm": fused},
        "decoding": {"beam": BEAM, "lm_weight": LM_WEIGHT, "word_bonus": WORD_BONUS, "lm": str(lm_dir)},
        "test": {name: {k: r[k] for k in ("wer", "cer", "real_time_factor", "by_snr")} for name, r in table.items()},
    }
    write_json(out / "demo.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    s = report["seed"]
    lines = [
        f"The seed's sentence, spoken by {s['voice']} (a voice training never heard) at {s['snr']:g} dB SNR "
        f"({s['audio']}):",
        f"  {'said:':<21}{s['reference']}",
        f"  {'heard (greedy):':<21}{s['greedy']}",
        f"  {'heard (with the LM):':<21}{s['lm']}",
        "",
        f"Test split ({report['utterances']['test']} utterances, unseen voices), word error rate by SNR; "
        f"the recogniser trained {report['training_minutes'] or 0:.1f} minutes:",
        f"{'SNR':>8} {'greedy':>8} {'with LM':>8}",
    ]
    for g, f in zip(report["test"]["greedy"]["by_snr"], report["test"]["lm"]["by_snr"]):
        snr = "clean" if g["snr"] is None else f"{g['snr']:g} dB"
        lines.append(f"{snr:>8} {g['wer']:>7.1f}% {f['wer']:>7.1f}%")
    lines.append(f"{'all':>8} {report['test']['greedy']['wer']:>7.1f}% {report['test']['lm']['wer']:>7.1f}%")
    d = report["decoding"]
    lines += ["", f"LM: {d['lm']} (beam {d['beam']}, weight {d['lm_weight']:g}, word bonus {d['word_bonus']:g}); "
                  f"real-time factor greedy {report['test']['greedy']['real_time_factor']:.3f}, "
                  f"with the LM {report['test']['lm']['real_time_factor']:.3f}"]
    return "\n".join(lines)
