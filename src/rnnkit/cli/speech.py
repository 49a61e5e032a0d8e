"""`rnnkit speech`: synthesise spoken sentences, train a recogniser, evaluate it, transcribe WAV files.

    rnnkit speech data --out DIR [--sentences N] [--text FILE]    espeak-ng voices, noise at 0-30 dB SNR
    rnnkit speech train --data DIR --out MODEL [--max-minutes N]
    rnnkit speech evaluate MODEL --data DIR/test [--lm LM] [--by-snr] --json
    rnnkit speech transcribe MODEL file.wav [--lm LM] [--json]
    rnnkit speech demo
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ..apps.speech import SpeechConfig, SpeechRecognizer, SpeechTrainConfig, evaluate, finish_run, train, transcribe_file
from ..apps.speech.ctc import LanguageModelScorer, lm_scorer
from ..apps.speech.data import load_split, speech_corpus
from ..errors import RnnkitError
from ..training import load_model, resolve_device
from .common import LOOP_FLAGS, config_fields, output_dir, run_demo_with_progress, train_with_progress, training_into

FLAGS = {
    "hidden": ("model", "hidden_size"), "layers": ("model", "num_layers"), "cell": ("model", "cell"),
    "channels": ("model", "channels"), "dropout": ("model", "dropout"),
    **LOOP_FLAGS, "wer_utterances": ("train", "wer_utterances"), "warp": ("train", "warp"),
}


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, help="prefix beam search of this width (default: 1, greedy, or 16 with --lm)")
    p.add_argument("--lm", type=Path, help="a char or word language model directory (rnnkit train) to fuse in")
    p.add_argument("--lm-weight", type=float, default=0.2, help="weight of its log-probabilities (default %(default)s)")
    p.add_argument("--word-bonus", type=float, default=2.0,
                   help="added per word with --lm, against the LM's preference for short outputs (default %(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("speech", help="speech recognition: a bidirectional recurrent network trained with CTC",
                       description=__doc__.split("\n\n")[0].replace("`", ""))
    commands = p.add_subparsers(dest="speech_command", metavar="COMMAND", parser_class=type(p))

    d = commands.add_parser("data", help="speak sentences with espeak-ng across voices, with noise")
    d.add_argument("--out", type=Path, required=True, help="folder for train/, valid/ and test/")
    d.add_argument("--sentences", type=int, default=3000, help="sentences to speak (default %(default)s)")
    d.add_argument("--text", type=Path, help="a text file, one sentence a line (default: household sentences)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=run_data)

    t = commands.add_parser("train", help="train a recogniser")
    t.add_argument("--data", type=Path, required=True, help="a folder with train/ and valid/ (rnnkit speech data)")
    t.add_argument("--out", type=Path, default=Path("runs/speech"), help="model directory (default: %(default)s)")
    t.add_argument("--cell", help="gru, lstm, ... (default gru)")
    t.add_argument("--hidden", type=int, help="recurrent units, both directions together (default 320)")
    t.add_argument("--layers", type=int, help="bidirectional layers (default 3)")
    t.add_argument("--channels", type=int, help="channels of the subsampling convolutions (default 32)")
    t.add_argument("--dropout", type=float, help="default 0.1")
    t.add_argument("--epochs", type=int, help="default 40")
    t.add_argument("--max-minutes", type=float, help="stop after this much training time, then save and evaluate")
    t.add_argument("--batch-size", type=int, help="utterances per batch (default 32)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 0.002)")
    t.add_argument("--clip", type=float, help="gradient-norm clipping (default 5)")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--device", help="auto, cpu, cuda, ... (default auto)")
    t.add_argument("--eval-every", type=int, help="also evaluate every N steps")
    t.add_argument("--checkpoint-every", type=int, help="save the trainer state every N steps (default 200)")
    t.add_argument("--early-stop", type=int, help="stop after N evaluations without improvement")
    t.add_argument("--warp", type=float,
                   help="vocal tract length perturbation: frequencies scaled by 1 +- up to this (default 0.1; 0: off)")
    t.add_argument("--wer-utterances", type=int, help="validation utterances transcribed at each evaluation (default 200)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--force", action="store_true", help="write into --out even if it holds files that are not a model")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train, params={field: flag for flag, (_, field) in FLAGS.items()})

    e = commands.add_parser("evaluate", help="word and character error rates (jiwer)")
    e.add_argument("model", type=Path, help="model directory")
    e.add_argument("--data", type=Path, required=True, help="a split folder with manifest.jsonl")
    _decoding_flags(e)
    e.add_argument("--by-snr", action="store_true", help="also a table by signal-to-noise ratio")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(run=run_evaluate)

    s = commands.add_parser("transcribe", help="transcribe WAV files")
    s.add_argument("model", type=Path, help="model directory")
    s.add_argument("audio", type=Path, nargs="+", help="WAV files (resampled to 16 kHz and mixed to mono as needed)")
    _decoding_flags(s)
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="one JSON object per file")
    s.set_defaults(run=run_transcribe)

    m = commands.add_parser("demo", help="synthesise speech, train a few minutes, transcribe with and without an LM")
    m.add_argument("--out", type=Path, default=Path("runs/speech-demo"), help="default: %(default)s")
    m.add_argument("--minutes", type=float, default=8.0, help="training time of the recogniser (default %(default)s)")
    m.add_argument("--retrain", action="store_true", help="train again instead of using the models in --out")
    m.set_defaults(run=run_demo)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_data(args: argparse.Namespace) -> int:
    if args.sentences < 20:
        raise RnnkitError(f"--sentences must be at least 20, got {args.sentences}")
    out = output_dir(args.out)
    print(f"speaking {args.sentences} sentences with espeak-ng ...", file=sys.stderr)
    speech_corpus(out, args.sentences, args.text, args.seed)
    counts = {name: len(load_split(out / name)) for name in ("train", "valid", "test")}
    print(f"speech: train {counts['train']}, valid {counts['valid']}, test {counts['test']} utterances in {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    out: Path = args.out
    fields = config_fields(args, FLAGS)
    with training_into(args, SpeechRecognizer.kind, "a speech recogniser") as saved:
        splits = {name: load_split(args.data / name) if (args.data / name).exists() else []
                  for name in ("train", "valid", "test")}
        if saved is not None:
            fields = {"model": {**saved["model"], **fields["model"]}, "train": {**saved.get("train", {}), **fields["train"]}}
        config = SpeechTrainConfig.from_dict(fields["train"])
        model_config = SpeechConfig.from_dict(fields["model"])
        summary = train_with_progress(args, lambda callbacks: train(out, splits, model_config, config,
                                                                    resume=args.resume, callbacks=callbacks))
        if summary is None:
            return 130
        results = finish_run(out, splits, summary)
    test = (f", test WER {results['test']['wer']:.1f}%, CER {results['test']['cer']:.1f}% (greedy)"
            if "test" in results else "")
    print(f"{summary['stopped']} after {summary['steps']} steps: best valid loss {summary['best_valid']:.3f}{test}; "
          f"model in {out}")
    return 0


def _decoder(args: argparse.Namespace) -> tuple[int, LanguageModelScorer | None]:
    """The beam width and the language model the flags ask for."""
    lm = None
    if args.lm is not None:
        lm_model, tokenizer = load_model(args.lm, resolve_device(args.device), kind="lm")
        lm = lm_scorer(lm_model, tokenizer)
    beam = args.beam if args.beam is not None else (16 if lm is not None else 1)
    if not 1 <= beam <= 256:
        raise RnnkitError(f"--beam must be between 1 and 256, got {beam}")
    return beam, lm


def run_evaluate(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, resolve_device(args.device), kind=SpeechRecognizer.kind)
    beam, lm = _decoder(args)
    result = evaluate(model, load_split(args.data), beam, lm, args.lm_weight, args.word_bonus, args.by_snr)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"WER {result['wer']:.2f}%, CER {result['cer']:.2f}% on {result['utterances']} utterances "
          f"(beam {beam}{', LM weight ' + format(args.lm_weight, 'g') if lm else ''}; "
          f"real-time factor {result['real_time_factor']:.3f})")
    for row in result.get("by_snr", []):
        snr = "clean" if row["snr"] is None else f"{row['snr']:g} dB"
        print(f"  {snr:>7}: WER {row['wer']:6.2f}%  CER {row['cer']:6.2f}%  ({row['utterances']} utterances)")
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, resolve_device(args.device), kind=SpeechRecognizer.kind)
    beam, lm = _decoder(args)
    for path in args.audio:
        text, notes = transcribe_file(model, path, beam, lm, args.lm_weight, args.word_bonus)
        for note in notes:
            print(f"rnnkit: note: {path}: {note}", file=sys.stderr)
        print(json.dumps({"audio": str(path), "text": text}) if args.json else text)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..apps.speech.demo import format_report, run_demo as demo

    out = output_dir(args.out)
    return run_demo_with_progress(partial(demo, out, args.minutes, retrain=args.retrain), format_report, out)
