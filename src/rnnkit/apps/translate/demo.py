"""`rnnkit translate demo`: translation end to end on this machine's own text.

Builds the English -> French corpus of the gettext catalogs Debian installed here (or, where there
are too few, English -> German number words, and says so), trains a translator for a few minutes
(once: the model is kept in OUT/model and reused), translates held-out sentences beside their
references, scores the test split with BLEU and chrF, and draws one sentence's attention.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...io import read_json, save_figure, write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model, pending_training
from .data import (LOCALE_DIR, MIN_GETTEXT_PAIRS, gettext_pairs, load_pairs, more_catalogs_hint, number_pairs,
                   split_pairs, write_splits)
from .model import TranslateConfig, Translator
from .plots import plot_attention
from .task import TranslateTrainConfig, attention_map, build_vocabularies, evaluate, finish_run, train, translate

SAMPLES = 8  # test sentences shown beside their references
PLAIN = re.compile(r"[A-Z][a-z]+(?: [a-z]+){2,7}\.?")  # "Could not open the file."


def corpus(data: Path, lang: str, say: Callable[[str], None], locale_dir: Path = LOCALE_DIR) -> str:
    """Write the demo's pairs to `data` (once); return what they are: "gettext-<lang>" or "numbers-de"."""
    about = data / "about.json"
    if about.exists():
        return read_json(about, "the demo corpus's about.json")["corpus"]
    pairs, catalogs = gettext_pairs(lang, locale_dir)
    if len(pairs) >= MIN_GETTEXT_PAIRS:
        name, splits = f"gettext-{lang}", split_pairs(pairs)
        say(f"{len(pairs)} English -> {lang} pairs from {len(catalogs)} message catalogs in {locale_dir}")
    else:
        say(f"only {len(pairs)} English -> {lang} pairs in this machine's catalogs (at least {MIN_GETTEXT_PAIRS} "
            f"are needed; {more_catalogs_hint()} brings more): using number words, English -> German, instead")
        name, splits = "numbers-de", split_pairs(number_pairs(3000, "de"), valid=5, test=10)
    write_splits(data, splits)
    write_json(about, {"corpus": name})
    return name


def run_demo(out: Path, lang: str = "fr", minutes: float = 4.0, retrain: bool = False, callback: Callback | None = None,
             say: Callable[[str], None] = print, locale_dir: Path = LOCALE_DIR) -> dict[str, Any] | None:
    """Run the demo into `out`; the report (also in OUT/demo.json), or None if training was interrupted."""
    name = corpus(out / "data", lang, say, locale_dir)
    splits = load_pairs(out / "data")
    directory = out / "model"
    callbacks = [] if callback is None else [callback]
    if (resume := pending_training(directory, retrain, say)) is not None:
        if resume:
            model, vocab = load_model(directory, kind=Translator.kind)
            model_config = model.config
        else:
            numbers = name.startswith("numbers")
            vocab = build_vocabularies(splits["train"], "char" if numbers else "bpe")
            model_config = TranslateConfig(vocab.source.vocab_size, vocab.target.vocab_size,
                                           embedding_size=64 if numbers else 256, hidden_size=256 if numbers else 512,
                                           dropout=0.1 if numbers else 0.2)
        config = TranslateTrainConfig(epochs=100, max_minutes=min(minutes, 2.0) if name.startswith("numbers") else minutes,
                                      eval_every=300, bleu_sentences=200, lr=3e-3 if name.startswith("numbers") else None)
        summary = train(directory, splits, vocab, model_config, config, resume=resume, callbacks=callbacks)
        if summary["stopped"] == "interrupted":
            return None
        started = time.perf_counter()
        finish_run(directory, splits, summary, beam=5)
        beam_seconds = time.perf_counter() - started
    else:
        beam_seconds = None
    results = read_json(directory / "results.json", "the demo model's results.json")
    model, vocab = load_model(directory, kind=Translator.kind)
    test = splits["test"]
    greedy = evaluate(model, vocab, test, beam=1)
    plain = [p for p in test if PLAIN.fullmatch(p[0])] or test  # sentences of plain words read best
    shown = plain[:: max(1, len(plain) // SAMPLES)][:SAMPLES]
    samples = translate(model, vocab, [s for s, _ in shown], beam=5)
    # the heat map of the sample that came closest to its reference (sentence chrF)
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    pick = max(zip(samples, shown), key=lambda x: chrf.sentence_score(x[0].text, [x[1][1]]).score)[0]
    save_figure(out / "attention.png", plot_attention(attention_map(model, vocab, pick), vocab, pick), dpi=100)
    history = results.get("history", [])
    report = {
        "corpus": name, "pairs": {k: len(v) for k, v in splits.items()},
        "training_minutes": history[-1]["elapsed_s"] / 60 if history else None, "steps": results["steps"],
        "test_bleu_beam5": results.get("test_bleu"), "test_chrf_beam5": results.get("test_chrf"),
        "test_bleu_greedy": greedy["bleu"], "test_chrf_greedy": greedy["chrf"],
        "beam5_sentences_per_s": len(test) / beam_seconds if beam_seconds else None,
        "signature": greedy["signature"]["bleu"],
        "samples": [{"source": t.source, "translation": t.text, "reference": ref} for t, (_, ref) in zip(samples, shown)],
        "attention_png": str(out / "attention.png"), "attention_of": pick.source,
        "bleu_by_minute": [{"minutes": h["elapsed_s"] / 60, "valid_bleu_greedy": h["valid_bleu"]}
                           for h in history if "valid_bleu" in h],
    }
    write_json(out / "demo.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"corpus: {report['corpus']} ({report['pairs']['train']} training pairs, {report['pairs']['test']} test)"]
    for s in report["samples"]:
        lines += [f"  {s['source']}", f"    -> {s['translation']}", f"    reference: {s['reference']}"]
    lines.append(f"test BLEU {report['test_bleu_beam5']:.1f} with beam 5, {report['test_bleu_greedy']:.1f} greedy; "
                 f"chrF {report['test_chrf_beam5']:.1f} / {report['test_chrf_greedy']:.1f}  ({report['signature']})")
    lines.append(f"attention of {report['attention_of']!r} (the sample closest to its reference): "
                 f"{report['attention_png']}")
    return "\n".join(lines)
