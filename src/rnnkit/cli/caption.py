"""`rnnkit caption`: build captioned images, train a captioner, evaluate it, describe images.

    rnnkit caption data scenes --out DIR [--images N]    generated shapes, captions in varied wording
    rnnkit caption data digits --out DIR                 strips of scikit-learn's scanned digits
    rnnkit caption train --data DIR --out MODEL [--max-minutes N]
    rnnkit caption evaluate MODEL --data DIR/test --json
    rnnkit caption describe MODEL image.png [--beam 3] [--attention-png FILE]
    rnnkit caption demo
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

from ..apps.caption import (TOKENIZER, CaptionConfig, CaptionTrainConfig, Captioner, attention_map, build_vocabulary,
                            describe, digits_corpus, evaluate, finish_run, load_splits, read_captions, read_image,
                            scenes_corpus, train)
from ..apps.caption.plots import plot_caption_attention
from ..data import load_tokenizer
from ..errors import RnnkitError
from ..io import save_figure
from ..nn.attention import SCORES
from ..training import load_model, resolve_device
from .common import LOOP_FLAGS, config_fields, output_dir, run_demo_with_progress, train_with_progress, training_into

FLAGS = {
    "hidden": ("model", "hidden_size"), "embedding": ("model", "embedding_size"), "features": ("model", "feature_size"),
    "channels": ("model", "channels"), "attention": ("model", "attention"), "dropout": ("model", "dropout"),
    **LOOP_FLAGS, "attention_penalty": ("train", "attention_penalty"), "bleu_images": ("train", "bleu_images"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="image captioning: a CNN and an LSTM with visual attention",
                       description=__doc__.split("\n\n")[0].replace("`", ""))
    commands = p.add_subparsers(dest="caption_command", metavar="COMMAND", parser_class=type(p))

    d = commands.add_parser("data", help="build captioned images: generated scenes or scanned digit strips")
    d.add_argument("source", choices=("scenes", "digits"))
    d.add_argument("--out", type=Path, required=True, help="folder for train/, valid/ and test/")
    d.add_argument("--images", type=int, help="training images (default: 6000 scenes, 8000 digit strips)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=run_data)

    t = commands.add_parser("train", help="train a captioner")
    t.add_argument("--data", type=Path, help="a folder with train/ (valid/, test/), or a folder with one captions.jsonl "
                   "(cut 90/5/5)")
    t.add_argument("--out", type=Path, default=Path("runs/caption"), help="model directory (default: %(default)s)")
    t.add_argument("--size", help="HxW the images are resized to (default: the first training image's size)")
    t.add_argument("--hidden", type=int, help="LSTM units (default 256)")
    t.add_argument("--embedding", type=int, help="word embedding size (default 64)")
    t.add_argument("--features", type=int, help="size of each grid cell's feature vector (default 128)")
    t.add_argument("--channels", type=int, help="channels of the first convolution (default 32)")
    t.add_argument("--attention", choices=SCORES, help="attention score (default bahdanau)")
    t.add_argument("--dropout", type=float, help="default 0.2")
    t.add_argument("--epochs", type=int, help="default 30")
    t.add_argument("--max-minutes", type=float, help="stop after this much training time, then save and evaluate")
    t.add_argument("--batch-size", type=int, help="captions per batch (default 64)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 0.002)")
    t.add_argument("--attention-penalty", type=float, help="lambda of the doubly stochastic penalty (default 0.1)")
    t.add_argument("--clip", type=float, help="gradient-norm clipping (default 1)")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--device", help="auto, cpu, cuda, ... (default auto)")
    t.add_argument("--eval-every", type=int, help="also evaluate every N steps")
    t.add_argument("--checkpoint-every", type=int, help="save the trainer state every N steps (default 200)")
    t.add_argument("--early-stop", type=int, help="stop after N evaluations without improvement")
    t.add_argument("--bleu-images", type=int, help="validation images captioned at each evaluation (default 300)")
    t.add_argument("--beam", type=int, default=3, help="beam width for the test split at the end (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--force", action="store_true", help="write into --out even if it holds files that are not a model")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train, params={field: flag for flag, (_, field) in FLAGS.items()})

    e = commands.add_parser("evaluate", help="BLEU-4 (sacrebleu, every reference) and exact match")
    e.add_argument("model", type=Path, help="model directory")
    e.add_argument("--data", type=Path, required=True, help="a folder with captions.jsonl (a split)")
    e.add_argument("--beam", type=int, default=1, help="beam width; 1 is greedy (default %(default)s)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(run=run_evaluate)

    s = commands.add_parser("describe", help="caption images")
    s.add_argument("model", type=Path, help="model directory")
    s.add_argument("images", type=Path, nargs="+", help="PNG or JPEG files")
    s.add_argument("--beam", type=int, default=3, help="beam width; 1 is greedy (default %(default)s)")
    s.add_argument("--attention-png", type=Path, help="the first image's attention for every word, as an overlay")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="one JSON object per image")
    s.set_defaults(run=run_describe)

    m = commands.add_parser("demo", help="generate scenes, train a few minutes, caption test scenes with attention")
    m.add_argument("--out", type=Path, default=Path("runs/caption-demo"), help="default: %(default)s")
    m.add_argument("--minutes", type=float, default=6.0, help="training time (default %(default)s)")
    m.add_argument("--retrain", action="store_true", help="train again instead of using the model in --out")
    m.set_defaults(run=run_demo)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_data(args: argparse.Namespace) -> int:
    if args.images is not None and args.images < 20:
        raise RnnkitError(f"--images must be at least 20, got {args.images}")
    out = output_dir(args.out)
    if args.source == "scenes":
        counts = scenes_corpus(out, args.images or 6000, args.seed)
    else:
        counts = digits_corpus(out, args.images or 8000, args.seed)
    print(f"{args.source}: train {counts['train']}, valid {counts['valid']}, test {counts['test']} images in {args.out}")
    return 0


def _size(text: str | None, first_image: Path) -> tuple[int, int]:
    if text is None:
        pixels = read_image(first_image)
        return pixels.shape[0], pixels.shape[1]
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RnnkitError(f"--size must look like 64x64 (height x width), got {text!r}") from None
    return h, w


def run_train(args: argparse.Namespace) -> int:
    out: Path = args.out
    fields = config_fields(args, FLAGS)
    with training_into(args, Captioner.kind, "a captioner") as saved:
        if args.data is None:
            raise RnnkitError("--data is needed (`rnnkit caption data scenes --out DIR` builds one)" if saved is None
                              else "--resume needs --data: the folder the run trained on")
        splits = load_splits(args.data)
        if saved is not None:
            tokenizer = load_tokenizer(out / TOKENIZER)
            fields = {"model": {**saved["model"], **fields["model"]}, "train": {**saved.get("train", {}), **fields["train"]}}
        else:
            if not splits["train"] or not splits["valid"]:
                raise RnnkitError(f"{args.data} leaves no training images or no validation images after the split")
            tokenizer = build_vocabulary(splits["train"])
            h, w = _size(args.size, splits["train"][0].image)
            fields["model"] = {**fields["model"], "vocab_size": tokenizer.vocab_size, "image_height": h, "image_width": w}
        config = CaptionTrainConfig.from_dict(fields["train"])
        model_config = CaptionConfig.from_dict(fields["model"])
        summary = train_with_progress(args, lambda callbacks: train(out, splits, tokenizer, model_config, config,
                                                                    resume=args.resume, callbacks=callbacks))
        if summary is None:
            return 130
        results = finish_run(out, splits, summary, args.beam)
    test = (f", test BLEU-4 {results['test_bleu4']:.1f}, exact {results['test_exact']:.1f}% (beam {args.beam})"
            if "test_bleu4" in results else "")
    print(f"{summary['stopped']} after {summary['steps']} steps: best valid loss {summary['best_valid']:.3f}{test}; "
          f"model in {out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, resolve_device(args.device), kind=Captioner.kind)
    result = evaluate(model, tokenizer, read_captions(args.data), args.beam)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"BLEU-4 {result['bleu4']:.2f}, exact {result['exact']:.1f}% on {result['images']} images (beam {args.beam})")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, resolve_device(args.device), kind=Captioner.kind)
    size = (model.config.image_height, model.config.image_width)
    images = torch.stack([torch.from_numpy(read_image(path, size)).permute(2, 0, 1) for path in args.images])
    captions = describe(model, tokenizer, images, args.beam)
    for path, caption in zip(args.images, captions):
        print(json.dumps({"image": str(path), "caption": caption.text, "score": caption.score}) if args.json
              else caption.text)
    if args.attention_png is not None:
        weights = attention_map(model, tokenizer, images[0], captions[0])
        save_figure(args.attention_png, plot_caption_attention(images[0], weights, tokenizer, captions[0]))
        print(f"attention of {args.images[0]} in {args.attention_png}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..apps.caption.demo import format_report, run_demo as demo

    out = output_dir(args.out)
    return run_demo_with_progress(partial(demo, out, args.minutes, retrain=args.retrain), format_report, out / "model")
