"""Speech recognition quality and speed on this machine: household sentences spoken by espeak-ng.

    python benchmarks/speech.py [--minutes 15] [--sentences 3000] [--lm MODEL_DIR]
                                [--out runs/bench-speech] [--json] [--quick]

`rnnkit speech data` (test voices never heard in training; test SNRs 0, 5, 10, 15, 20, 30 dB and
clean), the default recogniser (conv x4 subsampling, 3 bidirectional GRU layers of 2 x 160),
--minutes of training with an evaluation every 200 steps. Then the best model on the test split:
WER and CER (jiwer) by SNR, greedy and by prefix beam search (beam 16) with the household word
language model fused in (--lm, or `rnnkit demo`'s, trained into OUT/lm when none is given), and
the real-time factor of each on this machine's cores. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rnnkit.apps.speech import SpeechConfig, SpeechTrainConfig, evaluate, train
from rnnkit.apps.speech.ctc import lm_scorer
from rnnkit.apps.speech.data import load_split, speech_corpus
from rnnkit.demos.household.demo import trained_model
from rnnkit.training import load_model
from throughput import machine_info  # the script beside this one

BEAM, LM_WEIGHT, WORD_BONUS = 16, 0.2, 2.0  # tuned on the validation split (docs/speech.md)


def _rows(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["by_snr"]
    at = lambda pick: [r for r in rows if pick(r["snr"])]  # noqa: E731 - a filter over the SNR column
    return {"wer": result["wer"], "cer": result["cer"], "real_time_factor": result["real_time_factor"],
            "by_snr": rows, "wer_10db_and_up": _pooled(at(lambda s: s is None or s >= 10)),
            "wer_0_to_5db": _pooled(at(lambda s: s is not None and s <= 5))}


def _pooled(rows: list[dict[str, Any]]) -> float | None:
    """The WER of several SNR rows together, weighting each by its utterances (near enough: the
    rows' utterances are of one corpus and similar length)."""
    n = sum(r["utterances"] for r in rows)
    return sum(r["wer"] * r["utterances"] for r in rows) / n if n else None


def run(minutes: float, sentences: int, lm_dir: Path | None, out: Path, quick: bool) -> dict[str, Any]:
    shutil.rmtree(out / "model", ignore_errors=True)
    data = out / "data"
    speech_corpus(data, sentences)
    splits = {name: load_split(data / name) for name in ("train", "valid", "test")}
    model_config = SpeechConfig(**({"channels": 4, "hidden_size": 16, "num_layers": 1} if quick else {}))
    config = SpeechTrainConfig(epochs=1000, max_minutes=minutes, eval_every=20 if quick else 200,
                               wer_utterances=20 if quick else 200, checkpoint_every=None)
    summary = train(out / "model", splits, model_config, config)
    model, _ = load_model(out / "model", kind="speech")
    if lm_dir is None:
        lm_dir = trained_model(out / "lm")
    lm = lm_scorer(*load_model(lm_dir, kind="lm"))
    return {
        "utterances": {k: len(v) for k, v in splits.items()}, "model": model_config.to_dict(), "train": config.to_dict(),
        "steps": summary["steps"], "training_minutes": summary["history"][-1]["elapsed_s"] / 60,
        "history": [{"minutes": h["elapsed_s"] / 60, "step": h["step"], "valid_loss": h["valid_loss"],
                     "valid_wer_greedy": h.get("valid_wer")} for h in summary["history"]],
        "greedy": _rows(evaluate(model, splits["test"], by_snr=True)),
        "lm": {"model": str(lm_dir), "beam": BEAM, "lm_weight": LM_WEIGHT, "word_bonus": WORD_BONUS,
               **_rows(evaluate(model, splits["test"], BEAM, lm, LM_WEIGHT, WORD_BONUS, by_snr=True))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--lm", type=Path, help="a word or char language model to fuse in (default: the household one)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-speech"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny model and corpus, for the tests")
    args = parser.parse_args()
    sentences = 40 if args.quick else args.sentences
    result = {"machine": machine_info(), **run(args.minutes, sentences, args.lm, args.out, args.quick)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['steps']} steps in {result['training_minutes']:.1f} min; test WER by SNR (greedy / LM fused):")
    for g, f in zip(result["greedy"]["by_snr"], result["lm"]["by_snr"]):
        snr = "clean" if g["snr"] is None else f"{g['snr']:g} dB"
        print(f"  {snr:>7}: {g['wer']:6.2f}% / {f['wer']:6.2f}%")
    print(f"real-time factor: greedy {result['greedy']['real_time_factor']:.4f}, "
          f"LM fused {result['lm']['real_time_factor']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
