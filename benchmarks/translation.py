"""Translation quality and speed on this machine: BLEU against training minutes, greedy vs beam.

    python benchmarks/translation.py [--corpus gettext|numbers] [--lang fr] [--minutes 10]
                                     [--out runs/bench-translate] [--json] [--plot FILE] [--quick]

gettext: the English -> LANG corpus of the message catalogs installed here (`rnnkit translate data
gettext`), the default translator (BiGRU 2 x 256 -> GRU 512 with additive attention, BPE 4000 per
side), trained for --minutes with an evaluation (validation loss, greedy BLEU of 400 validation
pairs) every 300 steps. Then the best model translates the test split greedily and with beam 5:
sacrebleu BLEU and chrF, and sentences/s of each. numbers: English -> German number words 0 .. 2999
(char tokens), trained for at most --minutes; exact match on the held-out numbers.

Training throughput is target tokens/s, the mean of the loop's reports. Run it alone on the
machine: a second busy process slows training many-fold on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rnnkit.apps.translate import TranslateConfig, TranslateTrainConfig, build_vocabularies, evaluate, train, translate
from rnnkit.apps.translate.data import gettext_pairs, number_pairs, split_pairs
from rnnkit.io import save_figure
from rnnkit.training import load_model
from throughput import machine_info  # the script beside this one


def run(corpus: str, lang: str, minutes: float, out: Path, quick: bool) -> dict[str, Any]:
    numbers = corpus == "numbers"
    if numbers:
        splits = split_pairs(number_pairs(300 if quick else 3000, "de"), valid=5, test=10)
        vocab = build_vocabularies(splits["train"], "char")
        model_config = TranslateConfig(vocab.source.vocab_size, vocab.target.vocab_size, embedding_size=64,
                                       hidden_size=256, dropout=0.1)
        config = TranslateTrainConfig(epochs=100, lr=3e-3, max_minutes=minutes, eval_every=100, bleu_sentences=0,
                                      checkpoint_every=None, early_stop=8)
    else:
        pairs, _ = gettext_pairs(lang)
        splits = split_pairs(pairs[::20] if quick else pairs)
        vocab = build_vocabularies(splits["train"], "bpe", 500 if quick else None)
        model_config = TranslateConfig(vocab.source.vocab_size, vocab.target.vocab_size,
                                       **({"embedding_size": 32, "hidden_size": 64} if quick else {}))
        config = TranslateTrainConfig(epochs=100, max_minutes=minutes, eval_every=30 if quick else 300,
                                      bleu_sentences=50 if quick else 400, checkpoint_every=None)
    shutil.rmtree(out, ignore_errors=True)
    rates: list[float] = []
    torch.manual_seed(0)
    summary = train(out, splits, vocab, model_config, config,
                    callbacks=[lambda event, info: rates.append(info["tokens_per_s"]) if event == "step" else None])
    model, vocab = load_model(out)
    test = splits["test"]
    result: dict[str, Any] = {
        "corpus": f"gettext-{lang}" if not numbers else "numbers-de", "pairs": {k: len(v) for k, v in splits.items()},
        "model": model_config.to_dict(), "train": config.to_dict(), "steps": summary["steps"],
        "training_minutes": summary["history"][-1]["elapsed_s"] / 60, "stopped": summary["stopped"],
        "train_tokens_per_s": sum(rates) / max(len(rates), 1),
        "history": [{"minutes": h["elapsed_s"] / 60, "step": h["step"], "valid_loss": h["valid_loss"],
                     **({"valid_bleu_greedy": h["valid_bleu"]} if "valid_bleu" in h else {})} for h in summary["history"]],
    }
    for beam in (1, 5):
        started = time.perf_counter()
        if numbers:
            out_texts = translate(model, vocab, [s for s, _ in test], beam=beam)
            result[f"exact_beam{beam}"] = sum(t.text == ref for t, (_, ref) in zip(out_texts, test)) / len(test)
        else:
            scores = evaluate(model, vocab, test, beam=beam)
            result[f"test_bleu_beam{beam}"], result[f"test_chrf_beam{beam}"] = scores["bleu"], scores["chrf"]
            result["signature"] = scores["signature"]
        result[f"sentences_per_s_beam{beam}"] = len(test) / (time.perf_counter() - started)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    points = [h for h in result["history"] if "valid_bleu_greedy" in h]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([p["minutes"] for p in points], [p["valid_bleu_greedy"] for p in points], "o-", label="validation, greedy")
    end = result["training_minutes"]
    ax.plot([end], [result["test_bleu_beam5"]], "s", color="tab:red", label="test, beam 5 (best model)")
    ax.plot([end], [result["test_bleu_beam1"]], "^", color="tab:green", label="test, greedy (best model)")
    ax.set(xlabel="training minutes (2-core CPU)", ylabel="BLEU (sacrebleu)",
           title=f"{result['corpus']}: English -> {result['corpus'].split('-')[-1]}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(path, fig, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("gettext", "numbers"), default="gettext")
    parser.add_argument("--lang", default="fr")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-translate"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="BLEU against training minutes (gettext)")
    parser.add_argument("--quick", action="store_true", help="a tiny model on a slice, for the tests")
    args = parser.parse_args()
    result = {"machine": machine_info(), **run(args.corpus, args.lang, args.minutes, args.out, args.quick)}
    if args.plot is not None and args.corpus == "gettext":
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key not in ("history", "machine", "model", "train"):
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
