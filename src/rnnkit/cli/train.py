"""`rnnkit train`: train a recurrent language model on a text corpus into a model directory.

Under torchrun it trains on every process of the job (see `rnnkit.training.distributed`): rank 0
prepares the directory and the corpus, the others open what it wrote, and all of them train.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..apps.lm import LMConfig, LMTrainConfig, auto, finish_run, train
from ..apps.lm.presets import preset_path, presets
from ..data import KINDS, Tokenizer, build_corpus, load_tokenizer, open_corpus
from ..demos.household.corpus import default_corpus
from ..errors import RnnkitError
from ..io import read_json
from ..training import ProgressBar, TensorBoard, distributed, read_config
from ..training.checkpoint import check_target, lock_directory, remove_orphans
from ..training.loop import OPTIMIZERS, SCHEDULES, native_cpu_bf16, resolve_device

# flag -> (section, field); every flag defaults to None so that --config and the defaults show through
FLAGS = {
    "cell": ("model", "cell"), "hidden": ("model", "hidden_size"), "embedding": ("model", "embedding_size"),
    "layers": ("model", "num_layers"), "dropout": ("model", "dropout"), "tie_weights": ("model", "tie_weights"),
    "epochs": ("train", "epochs"), "max_minutes": ("train", "max_minutes"), "batch_size": ("train", "batch_size"),
    "bptt": ("train", "bptt"), "lr": ("train", "lr"), "optimizer": ("train", "optimizer"),
    "schedule": ("train", "schedule"), "clip": ("train", "clip"), "seed": ("train", "seed"),
    "device": ("train", "device"), "eval_every": ("train", "eval_every"),
    "checkpoint_every": ("train", "checkpoint_every"), "early_stop": ("train", "early_stop"),
    "cpu_bf16": ("train", "cpu_bf16"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a language model on text", description=__doc__)
    p.add_argument("--data", type=Path, help="training text: a file or a folder of .txt files (default: the household corpus)")
    p.add_argument("--valid", type=Path, help="validation text (default: 5%% carved off the training text)")
    p.add_argument("--test", type=Path, help="test text (default: 5%% carved off the training text)")
    p.add_argument("--out", type=Path, default=Path("runs/lm"), help="model directory (default: runs/lm)")
    p.add_argument("--config", type=Path, help='JSON file {"model": {...}, "train": {...}, "data": {...}}, or the '
                   f'name of a preset ({", ".join(presets())}); flags override it')
    p.add_argument("--cell", help="elman, lstm, gru, or a cell registered by an installed package (default lstm)")
    p.add_argument("--tokenizer", choices=KINDS, help="default: word")
    p.add_argument("--vocab-size", type=int, help="cap on the vocabulary (rarer tokens become <unk>)")
    p.add_argument("--hidden", type=int, help="hidden units H (default 256)")
    p.add_argument("--embedding", type=int, help="embedding size E (default: H)")
    p.add_argument("--layers", type=int, help="recurrent layers (default 2)")
    p.add_argument("--dropout", type=float, help="dropout on outputs and between layers (default 0)")
    p.add_argument("--tie-weights", action="store_const", const=True, help="share the embedding and output matrices")
    p.add_argument("--epochs", type=int, help="passes over the training text (default 10)")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time, then save and evaluate")
    p.add_argument("--batch-size", type=int, help="parallel streams B (default 20)")
    p.add_argument("--bptt", type=int, help="steps per window T (default 35)")
    p.add_argument("--lr", type=float, help="learning rate (default 20 for sgd/asgd, 0.002 for adamw)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: sgd")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default: plateau)")
    p.add_argument("--clip", type=float, help="gradient-norm clipping (default 0.25)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: auto, cuda when present)")
    p.add_argument("--eval-every", type=int, help="also evaluate every N steps")
    p.add_argument("--checkpoint-every", type=int, help="save the trainer state every N steps (default 200)")
    p.add_argument("--early-stop", type=int, help="stop after N evaluations without improvement")
    p.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction,
                   help="matrix products in bf16 on the CPU (autocast): 1.5-2.5x as fast on a CPU that multiplies bf16 "
                   "in hardware (AMX: Intel Xeon from Sapphire Rapids on; AVX512-BF16: AMD EPYC from Zen 4 on), slower "
                   "elsewhere (default: off; with no model or training flag, on where the CPU multiplies bf16)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds files that are not an rnnkit model")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to OUT/tensorboard (pip install 'rnnkit[tensorboard]')")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, params={field: flag for flag, (_, field) in FLAGS.items()})


# flags that leave the choice of model and schedule to `rnnkit.apps.lm.auto`; any other model or
# training flag, or --config, means the user chooses, and unset fields take the fixed defaults
NOT_SHAPE = {"max_minutes", "seed", "device", "eval_every", "checkpoint_every", "early_stop", "cpu_bf16"}


def _automatic(args: argparse.Namespace) -> bool:
    return args.config is None and not args.resume and all(
        getattr(args, flag) is None for flag in FLAGS if flag not in NOT_SHAPE)


def _auto_fields(corpus: Any, train_fields: dict[str, Any]) -> tuple[dict, dict] | None:
    """The model and training fields the rule of `rnnkit.apps.lm.auto` chooses for this corpus,
    said on stderr; the flags given (budget, seed, device, ...) stay as given. None for a text too
    short for one batch: the fixed defaults then say so in one line, with nothing measured."""
    if not auto.fits(len(corpus.train), corpus.tokenizer.kind):
        return None
    minutes = train_fields.get("max_minutes")
    if minutes is None:
        minutes = auto.DEFAULT_MINUTES
        print(f"rnnkit: no --max-minutes: training for {minutes:g} minutes", file=sys.stderr)
    device = resolve_device(train_fields.get("device", "auto"))
    print("rnnkit: no model or training flags: measuring this machine to fit the model to the corpus and budget "
          "(see `rnnkit.apps.lm.auto`)", file=sys.stderr)
    bf16 = train_fields.get("cpu_bf16", native_cpu_bf16()) if device.type == "cpu" else train_fields.get("bf16", True)
    chosen = auto.plan(len(corpus.train), corpus.tokenizer.kind, corpus.tokenizer.vocab_size, minutes,
                       len(corpus.valid), device, bf16)
    print(f"rnnkit: {chosen.summary}", file=sys.stderr)
    return chosen.model, {**chosen.train, **train_fields, "max_minutes": minutes}


def _configs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The model, train and data settings: defaults < --config file < flags."""
    sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    if args.config is not None:
        path = preset_path(args.config)
        loaded = read_json(path, "the --config file")
        if isinstance(loaded, dict) and isinstance(loaded.get("about"), str):
            loaded.pop("about")  # a description, for people
        if not isinstance(loaded, dict) or set(loaded) - set(sections):
            raise RnnkitError(f'{path}: expected a JSON object with "model", "train" and/or "data" sections')
        for name, values in loaded.items():
            if not isinstance(values, dict):
                raise RnnkitError(f'{path}: section "{name}" must be a JSON object')
            sections[name].update(values)
    for flag, (section, field) in FLAGS.items():
        if getattr(args, flag) is not None:
            sections[section][field] = getattr(args, flag)
    for flag in ("tokenizer", "vocab_size"):
        if getattr(args, flag) is not None:
            sections["data"][flag] = getattr(args, flag)
    return sections["model"], sections["train"], sections["data"]


def run(args: argparse.Namespace) -> int:
    model_fields, train_fields, data = _configs(args)
    group = _join(train_fields)
    main = distributed.leads(group)
    out: Path = args.out
    if distributed.restart_count() and not args.resume:  # torchrun restarted the job: go on from its checkpoint
        args.resume = True
        if main:
            print(f"rnnkit: torchrun restarted the job (restart {distributed.restart_count()}); resuming from {out}",
                  file=sys.stderr)
    with contextlib.ExitStack() as held:
        with distributed.together(group):  # an error here is said once, by rank 0
            unknown = set(data) - {"tokenizer", "vocab_size"}
            if unknown:
                raise RnnkitError(f"unknown data setting(s): {', '.join(sorted(unknown))}")
            if args.resume and (out / "config.json").exists():  # go on as saved; flags change what they name
                saved = read_config(out)
                train_fields, model_fields = {**saved.get("train", {}), **train_fields}, {**saved["model"], **model_fields}
            config = LMTrainConfig.from_dict(train_fields)
            if main:
                check_target(out, force=args.force)
                held.enter_context(lock_directory(out))  # a second `rnnkit train` on the same --out is refused here
                remove_orphans(out)  # what a killed run left; no other writer is here now
                corpus = _corpus(args, out, data)
            chosen = _auto_fields(corpus, train_fields) if main and _automatic(args) else None
        # the other processes open the corpus rank 0 built, on the file system they share, and take
        # the settings its rule chose (settings given differently are refused when training starts)
        args.resume, tokenizer, chosen = distributed.broadcast(
            group, (args.resume, corpus.tokenizer.to_json(), chosen) if main else None)
        if not main:
            corpus = open_corpus(out / "data", Tokenizer.from_json(tokenizer))
        if chosen is not None:
            model_fields, train_fields = chosen
            config = LMTrainConfig.from_dict(train_fields)
        return _train(args, out, corpus, config, LMConfig.from_dict({**model_fields, "vocab_size": corpus.tokenizer.vocab_size}), group)


def _join(train_fields: dict[str, Any]) -> distributed.Group | None:
    """Join the torchrun job this process belongs to, if any, before anything can fail, so that an
    error every process meets is said once."""
    name = train_fields.get("device", "auto")
    try:
        device = resolve_device(name if isinstance(name, str) else "auto")
    except RnnkitError:
        device = torch.device("cpu")  # the training config's check says what is wrong with it
    return distributed.setup(device)[0]


def _corpus(args: argparse.Namespace, out: Path, data: dict[str, Any]) -> Any:
    """The corpus in OUT/data, built with the saved tokenizer when resuming; settles args.resume."""
    if args.resume and not (out / "config.json").exists():
        print(f"rnnkit: note: {out} holds no model yet (its run stopped before the first save); starting afresh",
              file=sys.stderr)
        args.resume = False
    elif not args.resume and (out / "config.json").exists():
        raise RnnkitError(f"{out} already holds a model: use --resume to continue it, or another --out")
    if args.resume:
        tokenizer: Any = load_tokenizer(out / "tokenizer.json")
        if data.get("tokenizer", tokenizer.kind) != tokenizer.kind:
            raise RnnkitError(f"--resume with another tokenizer ({data['tokenizer']}) than the {tokenizer.kind} one in {out}")
    else:
        tokenizer = data.get("tokenizer", "word")
    train_path = args.data if args.data is not None else default_corpus(out / "data")
    return build_corpus(
        train_path, args.valid, args.test, out_dir=out / "data", tokenizer=tokenizer, vocab_size=data.get("vocab_size")
    )


def _train(args: argparse.Namespace, out: Path, corpus: Any, config: LMTrainConfig, model_config: LMConfig,
           group: distributed.Group | None) -> int:
    main = distributed.leads(group)
    callbacks = [] if args.quiet or not main else [ProgressBar()]
    if args.tensorboard and main:
        callbacks.append(TensorBoard(out))
    try:
        summary = train(out, corpus, model_config, config, resume=args.resume, callbacks=callbacks)
    finally:
        for callback in callbacks:
            if isinstance(callback, ProgressBar):
                callback.close()
    distributed.leave(group)  # rank 0 then evaluates the test text alone
    if not main:
        return 130 if summary["stopped"] == "interrupted" else 0
    if summary["stopped"] == "interrupted":
        print(f"rnnkit: interrupted at step {summary['steps']}; saved in {out}, continue with --resume", file=sys.stderr)
        return 130
    results = finish_run(out, corpus, config, summary)
    print(
        f"{summary['stopped']} after {summary['steps']} steps: best valid perplexity "
        f"{math.exp(min(summary['best_valid'], 700)):.2f}, test perplexity {results['test_perplexity']:.2f}; model in {out}"
    )
    return 0
