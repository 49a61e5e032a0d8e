"""`rnnkit caption demo`: generated scenes, a few minutes of training, captions and where they looked.

Generates the scenes (once, in OUT/data), trains a captioner (once: the model is kept in
OUT/model and reused), captions held-out scenes (each with an object whose size, colour and
shape together training never showed) beside their references, scores the test split, measures
how much of each colour or shape word's attention lands on the object it names, and writes the
attention overlays of a few scenes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...io import read_json, save_figure, write_json
from ...training.callbacks import Callback
from ...training.checkpoint import load_model, pending_training
from .data import load_splits, scenes_corpus
from .model import CaptionConfig, Captioner
from .plots import plot_caption_attention
from .task import (CaptionTrainConfig, attention_map, attention_on_objects, build_vocabulary, describe, finish_run,
                   load_images, train)

SHOWN = 4  # test scenes captioned, with their overlays


def run_demo(out: Path, minutes: float = 6.0, retrain: bool = False, callback: Callback | None = None,
             say: Callable[[str], None] = print, images: int = 6000) -> dict[str, Any] | None:
    """Run the demo into `out`; the report (also in OUT/demo.json), or None if training was interrupted."""
    data, directory = out / "data", out / "model"
    if not (data / "test" / "captions.jsonl").exists():
        counts = scenes_corpus(data, images)
        say(f"generated {counts['train']} training scenes, {counts['test']} test scenes with objects unseen in "
            f"training")
    splits = load_splits(data)
    if (resume := pending_training(directory, retrain, say)) is not None:
        if resume:
            model, tokenizer = load_model(directory, kind=Captioner.kind)
            model_config = model.config
        else:
            tokenizer = build_vocabulary(splits["train"])
            model_config = CaptionConfig(tokenizer.vocab_size)
        config = CaptionTrainConfig(epochs=100, max_minutes=minutes, eval_every=200, bleu_images=200)
        summary = train(directory, splits, tokenizer, model_config, config, resume=resume,
                        callbacks=[] if callback is None else [callback])
        if summary["stopped"] == "interrupted":
            return None
        finish_run(directory, splits, summary, beam=3)
    results = read_json(directory / "results.json", "the demo model's results.json")
    model, tokenizer = load_model(directory, kind=Captioner.kind)
    test = splits["test"]
    shown = test[:SHOWN]
    images = load_images(shown, (model.config.image_height, model.config.image_width))
    captions = describe(model, tokenizer, images, beam=3)
    pictures = []
    for k, (image, caption) in enumerate(zip(images, captions)):
        path = out / f"attention-{k}.png"
        save_figure(path, plot_caption_attention(image, attention_map(model, tokenizer, image, caption), tokenizer,
                                                 caption), dpi=100)
        pictures.append(str(path))
    looked = attention_on_objects(model, tokenizer, test)
    history = results.get("history", [])
    report = {
        "images": {k: len(v) for k, v in splits.items()}, "steps": results["steps"],
        "training_minutes": history[-1]["elapsed_s"] / 60 if history else None,
        "test_bleu4_beam3": results.get("test_bleu4"), "test_exact_beam3": results.get("test_exact"),
        "attention": looked,
        "samples": [{"image": str(e.image), "caption": c.text, "references": e.captions, "overlay": p}
                    for e, c, p in zip(shown, captions, pictures)],
    }
    write_json(out / "demo.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['images']['train']} training scenes; test scenes hold objects (size, colour, shape) never "
             f"seen in training"]
    for s in report["samples"]:
        lines += [f"  {s['caption']}", f"    reference: {s['references'][0]}", f"    attention: {s['overlay']}"]
    a = report["attention"]
    looked = (f"a colour or shape word puts {100 * a['share_inside']:.0f}% of its attention on the object it names "
              f"(its box is {100 * a['share_if_uniform']:.0f}% of the image)" if a["words"]
              else "no caption names the colour or shape of one object alone")
    lines.append(f"test BLEU-4 {report['test_bleu4_beam3']:.1f}, exact {report['test_exact_beam3']:.1f}% (beam 3); "
                 + looked)
    return "\n".join(lines)
