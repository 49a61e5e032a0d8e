"""Captioning quality on this machine: generated scenes (BLEU-4, exact match, where attention
lands) and strips of scanned digits (exact match).

    python benchmarks/captioning.py [--corpus scenes|digits] [--minutes 10] [--images 6000]
                                    [--out runs/bench-caption] [--json] [--quick]

scenes: `rnnkit caption data scenes` (each test scene holds an object whose size, colour and shape
together training never showed), the default captioner, --minutes of training with an evaluation
every 200 steps (validation loss, greedy BLEU-4 of 300 validation scenes). Then the best model
on the test scenes: BLEU-4 (sacrebleu, against all 3-4 references) and exact match, greedy and
beam 3, and the share of each colour or shape word's attention inside the box of the object it
names, against the share an even spread would give. digits: strips of held-out scans, exact match.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any


from rnnkit.apps.caption import (CaptionConfig, CaptionTrainConfig, build_vocabulary, digits_corpus, evaluate,
                                 load_splits, scenes_corpus, train)
from rnnkit.apps.caption.task import attention_on_objects
from rnnkit.training import load_model
from throughput import machine_info  # the script beside this one


def run(corpus: str, minutes: float, images: int, out: Path, quick: bool) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    (scenes_corpus if corpus == "scenes" else digits_corpus)(data, images)
    splits = load_splits(data)
    tokenizer = build_vocabulary(splits["train"])
    size = (64, 64) if corpus == "scenes" else (16, 80)
    model_config = CaptionConfig(tokenizer.vocab_size, image_height=size[0], image_width=size[1],
                                 **({"channels": 8, "hidden_size": 32, "feature_size": 16} if quick else {}))
    config = CaptionTrainConfig(epochs=200, max_minutes=minutes, eval_every=20 if quick else 200,
                                bleu_images=20 if quick else 300, checkpoint_every=None)
    rates: list[float] = []
    summary = train(out / "model", splits, tokenizer, model_config, config,
                    callbacks=[lambda event, info: rates.append(info["tokens_per_s"]) if event == "step" else None])
    model, tokenizer = load_model(out / "model")
    result: dict[str, Any] = {
        "corpus": corpus, "images": {k: len(v) for k, v in splits.items()}, "model": model_config.to_dict(),
        "train": config.to_dict(), "steps": summary["steps"], "stopped": summary["stopped"],
        "training_minutes": summary["history"][-1]["elapsed_s"] / 60, "train_words_per_s": sum(rates) / max(len(rates), 1),
        "history": [{"minutes": h["elapsed_s"] / 60, "step": h["step"], "valid_loss": h["valid_loss"],
                     "valid_bleu4_greedy": h.get("valid_bleu4"), "valid_exact_greedy": h.get("valid_exact")}
                    for h in summary["history"]],
    }
    for beam in (1, 3):
        started = time.perf_counter()
        scores = evaluate(model, tokenizer, splits["test"], beam)
        result[f"test_bleu4_beam{beam}"], result[f"test_exact_beam{beam}"] = scores["bleu4"], scores["exact"]
        result[f"images_per_s_beam{beam}"] = len(splits["test"]) / (time.perf_counter() - started)
    if corpus == "scenes":
        result["attention"] = attention_on_objects(model, tokenizer, splits["test"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("scenes", "digits"), default="scenes")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--images", type=int, help="training images (default 6000 scenes, 8000 digit strips)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-caption"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny model on a few images, for the tests")
    args = parser.parse_args()
    images = args.images or (200 if args.quick else 6000 if args.corpus == "scenes" else 8000)
    result = {"machine": machine_info(), **run(args.corpus, args.minutes, images, args.out, args.quick)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key not in ("history", "machine", "model", "train"):
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
