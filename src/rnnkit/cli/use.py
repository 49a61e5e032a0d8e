"""`rnnkit evaluate`, `predict` and `generate`: use a trained model directory."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import tempfile

from ..apps.lm import RNNLanguageModel, beam_search, evaluate, predict_next, sample
from ..apps.lm.onnx import RUNTIMES, OnnxLanguageModel, load_onnx
from ..data import encode_to_file
from ..errors import RnnkitError
from ..training import load_model, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="perplexity of a model on a text file")
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("--data", type=Path, required=True, help="text file or folder of .txt files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.set_defaults(run=run_evaluate)

    p = sub.add_parser("predict", help="the most probable next tokens after a prompt")
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("prompt", nargs="?", help='e.g. "I picked up the remote controller on the couch and turned on the"')
    p.add_argument("--prompt-file", type=Path, help="read the prompt from this file instead (- for standard input)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _runtime_flag(p)
    p.set_defaults(run=run_predict)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("--prompt", help="text to continue (default: none)")
    p.add_argument("--prompt-file", type=Path, help="read the prompt from this file instead (- for standard input)")
    p.add_argument("--length", type=int, default=50, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, help="sample among the k most probable tokens")
    p.add_argument("--top-p", type=float, help="sample among the most probable tokens that make up this mass")
    p.add_argument("--beam", type=int, help="beam search of this width instead of sampling")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    _runtime_flag(p)
    p.set_defaults(run=run_generate)


def _runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=("torch", *RUNTIMES), default="torch",
                   help="run the model in PyTorch, or its ONNX export in onnxruntime (float32; int8 or int4: faster, "
                   "slightly less accurate; made by `rnnkit export MODEL --format onnx [--int8] [--int4]`) "
                   "(default: %(default)s)")


def _load(args: argparse.Namespace) -> tuple[RNNLanguageModel | OnnxLanguageModel, Any]:
    """The language model to run, as --runtime asks, and its tokenizer."""
    if args.runtime == "torch":
        return load_model(args.model, kind=RNNLanguageModel.kind)
    return load_onnx(args.model, RUNTIMES[args.runtime])


def run_evaluate(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, resolve_device(args.device), kind=RNNLanguageModel.kind)
    with tempfile.TemporaryDirectory(prefix="rnnkit-evaluate-") as tmp:  # ids on disk: text of any size
        ids = encode_to_file(args.data, tokenizer, Path(tmp) / "ids.bin", "evaluation text")
        metrics = evaluate(model, ids)
    result = {"perplexity": metrics["perplexity"], "loss": metrics["loss"], "tokens": metrics["tokens"]}
    if tokenizer.kind == "char":
        result["bits_per_char"] = metrics["loss"] / math.log(2)
    if args.json:
        print(json.dumps(result))
    else:
        extra = f", {result['bits_per_char']:.3f} bits per character" if "bits_per_char" in result else ""
        print(f"perplexity {result['perplexity']:.2f} over {result['tokens']} tokens{extra}")
    return 0


def _warn_unknown(words: list[str]) -> None:
    if words:
        print(f"rnnkit: warning: not in the vocabulary, read as <unk>: {', '.join(words)}", file=sys.stderr)


def _prompt(args: argparse.Namespace, required: bool) -> str:
    """The prompt from the command line, or from --prompt-file (- for standard input), whose one
    final line end is not part of it."""
    if args.prompt is not None and args.prompt_file is not None:
        raise RnnkitError("give the prompt on the command line or in --prompt-file, not both")
    if args.prompt_file is None:
        if args.prompt is None and required:
            raise RnnkitError("give a prompt, or --prompt-file FILE (- for standard input)")
        return args.prompt or ""
    try:
        raw = sys.stdin.buffer.read() if str(args.prompt_file) == "-" else args.prompt_file.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RnnkitError(f"--prompt-file {args.prompt_file} is not UTF-8 text (byte offset {e.start})") from None
    return text[:-1] if text.endswith("\n") else text


def run_predict(args: argparse.Namespace) -> int:
    prompt = _prompt(args, required=True)
    model, tokenizer = _load(args)
    predictions, unknown = predict_next(model, tokenizer, prompt, args.top_k)
    _warn_unknown(unknown)
    if args.json:
        print(json.dumps({"prompt": prompt, "predictions": [{"token": p.token, "prob": p.prob} for p in predictions]}))
    else:
        for p in predictions:
            print(f"{p.prob:7.2%}  {p.token}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    prompt = _prompt(args, required=False)
    model, tokenizer = _load(args)
    _warn_unknown(tokenizer.unknown_words(prompt))
    space = " " if prompt and tokenizer.kind == "word" else ""
    if args.beam is not None:
        text, _ = beam_search(model, tokenizer, prompt, args.length, args.beam)
        print(prompt + space + text)
        return 0
    pieces = sample(model, tokenizer, prompt, args.length, args.temperature, args.top_k, args.top_p, args.seed)
    print(prompt, end=space, flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    return 0
