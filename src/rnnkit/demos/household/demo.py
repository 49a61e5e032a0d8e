"""The demo: the seed's example, run. Trains an LSTM language model on the household corpus
(once: the model is cached in `out`), then shows

1. the top 5 next words after the seed's full sentence and after "turned on the" alone;
2. which earlier words drove the prediction (occlusion and integrated gradients), as text and PNG;
3. memory over distance: Elman, LSTM, GRU and a fixed-window model (see `rnnkit memory`).

Writes into `out`: model/ (a model directory, usable with `rnnkit predict`), attribution.png,
memory/ (memory.png, .json, .csv) and demo.json (everything printed, as JSON).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...apps.lm import LMConfig, LMTrainConfig, Prediction, RNNLanguageModel, finish_run, next_log_probs, predict_next, train
from ...data import Tokenizer, build_corpus
from ...diagnostics import attribute, plot_attribution
from ...errors import RnnkitError
from ...io import read_json, save_figure, write_json
from ...training import Callback, load_model
from ...training.checkpoint import lock_directory
from . import corpus as household
from .memory import MODELS, MemoryConfig, format_table, run_memory

SHORT_PROMPT = "turned on the"
# sentences for "turned on the" alone, from another seed than the training corpus's (0): held out
ALONE_SENTENCES, ALONE_SEED = 400, 7919
SENTENCES = household.DEFAULT_SENTENCES  # of the household corpus the model is trained on
# the demo's language model: about half a minute of training on 2 CPU cores, 10 epochs
MODEL = {"cell": "lstm", "hidden_size": 128, "num_layers": 1}
TRAINING = LMTrainConfig(optimizer="adamw", lr=3e-3, epochs=10, max_minutes=2.0)
# memory over distance at a smaller size than `rnnkit memory`'s default, to fit the demo's budget
MEMORY = MemoryConfig(max_distance=24, buckets=(4, 5, 10, 20), test_sentences=600, steps=2500)


def run_demo(
    out: Path,
    retrain: bool = False,
    callback: Callback | None = None,
    memory_progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Train (or reuse) the demo's model in out/model, measure what the demo shows, write
    out/attribution.png, out/memory/ and out/demo.json; return the report and the memory report,
    or None when training was interrupted (it resumes on the next call). `callback` sees the
    training loop's events, `memory_progress(model, steps)` the memory models' training."""
    with lock_directory(out):  # one demo at a time in `out`
        return _run_demo(out, retrain, callback, memory_progress)


def _run_demo(
    out: Path, retrain: bool, callback: Callback | None, memory_progress: Callable[[str, int], None] | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    model_dir = trained_model(out, retrain=retrain, callback=callback)
    if model_dir is None:
        return None
    model, tokenizer = load_model(model_dir, kind=RNNLanguageModel.kind)
    prompts = {"sentence": household.SEED_SENTENCE.rsplit(" ", 1)[0], "alone": SHORT_PROMPT}
    alone, sentences = _alone(model, tokenizer)
    top = {"sentence": predict_next(model, tokenizer, prompts["sentence"], top_k=5)[0], "alone": alone}

    devices = list(household.DEVICE_WORDS)
    said = top["sentence"][0].token
    attribution = attribute(model, tokenizer, prompts["sentence"], said, devices if said in devices else None)
    save_figure(out / "attribution.png", plot_attribution(attribution), dpi=100)

    memory = _memory(out / "memory", retrain=retrain, progress=memory_progress)
    report = {
        "model": str(model_dir),
        "prompts": prompts,
        "alone_sentences": sentences,
        "top5": {name: [{"token": p.token, "prob": p.prob} for p in preds] for name, preds in top.items()},
        "attribution": {**attribution.to_dict(), "candidates": devices if said in devices else None},
        "memory": {k: memory[k] for k in ("chance", "test_sentences", "buckets")}
        | {"accuracy": {r["model"]: r["accuracy"] for r in memory["results"]}, "window": memory["config"]["window"]},
        "files": {"attribution": str(out / "attribution.png"), "memory": memory["files"]["png"],
                  "json": str(out / "demo.json")},
    }
    write_json(out / "demo.json", report)
    return report, memory


def _alone(model: RNNLanguageModel, tokenizer: Tokenizer, top_k: int = 5) -> tuple[list[Prediction], int]:
    """The top next words after "... turned on the" with the words before it unknown: the model's
    p(next | sentence) averaged over held-out household sentences that end so (a Monte Carlo
    estimate of p(next | "turned on the")). Read literally, "turned on the" at the start of a line
    is a context the model never saw, and its answer there says nothing. Also returns the number
    of sentences averaged over."""
    samples = household.generate(ALONE_SENTENCES, seed=ALONE_SEED)
    prompts = [s.prompt for s in samples if s.prompt.endswith(" " + SHORT_PROMPT)]
    probs = next_log_probs(model, tokenizer, prompts).exp().mean(0)  # (V,)
    values, indices = probs.topk(top_k)
    return [Prediction(tokenizer.token(int(i)), float(v)) for v, i in zip(values, indices)], len(prompts)


def trained_model(out: Path, retrain: bool = False, callback: Callback | None = None) -> Path | None:
    """The demo's model directory: cached when a finished run is there (results.json), resumed
    when an interrupted one is, trained otherwise. With `retrain`, a new model is trained beside
    the old one, which is replaced only when the new one is finished. None if interrupted."""
    model_dir, old = out / "model", out / "model.old"
    if old.exists() and not model_dir.exists():  # a retrain stopped between its two renames
        old.rename(model_dir)
    if (model_dir / "results.json").exists() and not retrain:
        return model_dir
    target = out / "model.new" if retrain else model_dir
    if retrain and target.exists():
        shutil.rmtree(target)
    resume = (target / "config.json").exists()
    corpus = build_corpus(household.default_corpus(target / "data", SENTENCES), out_dir=target / "data", tokenizer="word")
    model_config = LMConfig.from_dict({**MODEL, "vocab_size": corpus.tokenizer.vocab_size})
    try:
        summary = train(target, corpus, model_config, TRAINING, resume=resume, callback=callback)
    except RnnkitError as error:
        if not resume:
            raise
        raise RnnkitError(f"{error} (retrain=True, `rnnkit demo --retrain`, starts the demo's model afresh)") from None
    if summary["stopped"] == "interrupted":
        return None
    finish_run(target, corpus, TRAINING, summary)
    if retrain:
        shutil.rmtree(old, ignore_errors=True)
        if model_dir.exists():
            model_dir.rename(old)
        target.rename(model_dir)
        shutil.rmtree(old, ignore_errors=True)
    return model_dir


def _memory(out: Path, retrain: bool, progress: Callable[[str, int], None] | None) -> dict[str, Any]:
    """The memory-over-distance report, from out/memory.json when it was made with the demo's
    settings, else measured again."""
    cached = out / "memory.json"
    if cached.exists() and not retrain:
        try:
            report = read_json(cached, "the cached memory results")
        except RnnkitError:  # damaged: measure again
            report = None
        if isinstance(report, dict) and report.get("config") == json.loads(json.dumps(asdict(MEMORY))):
            return report
    return run_memory(MEMORY, list(MODELS), out, progress=progress)


def format_report(report: dict[str, Any], memory: dict[str, Any]) -> str:
    """The demo's report as text: predictions side by side, attribution bars, the memory table."""
    left, right = report["top5"]["sentence"], report["top5"]["alone"]
    width = 38
    lines = [
        f'The model reads "{report["prompts"]["sentence"]} ..."',
        "",
        f"{'after the whole sentence':<{width}}after \"{report['prompts']['alone']}\" alone (the words before it",
        f"{'':<{width}}unknown: mean over {report['alone_sentences']} held-out sentences)",
    ]
    # a device's first word stands for the device: "lawn (mower)"
    names = {d.split()[0]: f"{d.split()[0]} ({' '.join(d.split()[1:])})" for d in household.DEVICES if " " in d}
    for i, (a, b) in enumerate(zip(left, right), 1):
        first = f"{i}. {names.get(a['token'], a['token']):<18}{a['prob']:>7.1%}"
        lines.append(f"{first:<{width}}{i}. {names.get(b['token'], b['token']):<18}{b['prob']:>7.1%}")

    a = report["attribution"]
    over = f"among the {len(a['candidates'])} devices" if a["candidates"] else "over the vocabulary"
    lines += [
        "",
        f"Which words made it say \"{a['target']}\" (p {over}: {a['prob']:.1%}):",
        "  occlusion: log-odds of it lost when the word is swapped for the words the model expected there;",
        "  integrated gradients (Captum): its share of the log-odds gained over sentences whose words",
        "  are drawn from those the model expected (the bar)",
        f"{'word':<12}{'occlusion':>10}{'integrated':>12}",
    ]
    scale = max(max(abs(v) for v in a["integrated_gradients"]), 1e-9)
    for token, occ, ig in zip(a["tokens"], a["occlusion"], a["integrated_gradients"]):
        bar = "#" * round(24 * max(ig, 0.0) / scale)
        lines.append(f"{token:<12}{occ:>10.2f}{ig:>12.2f}   {bar}".rstrip())

    lines += ["", "Memory over distance:", format_table(memory), "",
              f"files: {report['files']['attribution']}, {report['files']['memory']}, {report['files']['json']}",
              f"model: {report['model']} (try: rnnkit predict {report['model']} \"I grabbed the tea bag and turned on the\")"]
    return "\n".join(lines)
