"""`rnnkit translate`: build parallel text, train a translator, evaluate it with BLEU, translate.

    rnnkit translate data gettext --lang fr --out DIR     English -> French from this machine's catalogs
    rnnkit translate data numbers --lang de --out DIR     number words (num2words), fast to learn
    rnnkit translate train --data DIR|FILE.tsv --out MODEL [--max-minutes N]
    rnnkit translate evaluate MODEL --data test.tsv [--beam 5] [--json]
    rnnkit translate run MODEL "Open the file" [--beam 5] [--json] [--attention-png FILE]
    rnnkit translate demo
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ..apps.translate import (SOURCE, TARGET, TranslateConfig, TranslateTrainConfig, Translator, Vocabularies,
                              attention_map, build_vocabularies, evaluate, finish_run, gettext_corpus, load_pairs,
                              number_corpus, read_tsv, train, translate)
from ..apps.translate.data import GETTEXT_LANGUAGES, MIN_GETTEXT_PAIRS, more_catalogs_hint, write_splits
from ..apps.translate.plots import plot_attention
from ..data import KINDS, load_tokenizer
from ..errors import RnnkitError
from ..io import save_figure
from ..nn.attention import SCORES
from ..training import load_model, resolve_device
from .common import LOOP_FLAGS, config_fields, output_dir, run_demo_with_progress, train_with_progress, training_into

# flag -> (section, field), for flags that set a config field; None: the config's default
FLAGS = {
    "cell": ("model", "cell"), "hidden": ("model", "hidden_size"), "embedding": ("model", "embedding_size"),
    "layers": ("model", "encoder_layers"), "decoder_layers": ("model", "decoder_layers"),
    "attention": ("model", "attention"), "dropout": ("model", "dropout"), "tie_embeddings": ("model", "tie_embeddings"),
    "max_length": ("model", "max_length"),
    **LOOP_FLAGS, "label_smoothing": ("train", "label_smoothing"), "bleu_sentences": ("train", "bleu_sentences"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="machine translation: an encoder-decoder with attention",
                       description=__doc__.split("\n\n")[0].replace("`", ""))
    commands = p.add_subparsers(dest="translate_command", metavar="COMMAND", parser_class=type(p))

    data = commands.add_parser("data", help="build parallel text: gettext catalogs or number words")
    data.add_argument("source", choices=("gettext", "numbers"),
                      help="gettext: English -> LANG from the message catalogs Debian packages install; "
                           "numbers: English number words -> LANG (num2words)")
    data.add_argument("--lang", default=None, help=f"target language: {', '.join(GETTEXT_LANGUAGES)} for gettext "
                                                   "(default fr); any num2words language for numbers (default de)")
    data.add_argument("--out", type=Path, required=True, help="folder for train.tsv, valid.tsv and test.tsv")
    data.add_argument("--count", type=int, default=3000, help="numbers: the numbers 0 .. COUNT-1 (default %(default)s)")
    data.set_defaults(run=run_data)

    t = commands.add_parser("train", help="train a translator on parallel text")
    t.add_argument("--data", type=Path, help="a folder with train.tsv (valid.tsv, test.tsv), a TSV file "
                   "(source<TAB>target), or with --target the source side of two aligned files "
                   "(default on --resume: the pairs saved in MODEL/data)")
    t.add_argument("--target", type=Path, help="the target side, line by line aligned with --data")
    t.add_argument("--out", type=Path, default=Path("runs/translate"), help="model directory (default: %(default)s)")
    t.add_argument("--tokenizer", choices=KINDS, default="bpe", help="default: %(default)s")
    t.add_argument("--vocab-size", type=int, help="tokens per vocabulary (default: 4000 for bpe, all for char and word)")
    t.add_argument("--shared-vocab", action="store_true", help="one vocabulary for both languages")
    t.add_argument("--cell", help="gru, lstm, elman, or a registered cell (default gru)")
    t.add_argument("--hidden", type=int, help="decoder units H; each encoder direction has H/2 (default 512)")
    t.add_argument("--embedding", type=int, help="embedding size E (default 256)")
    t.add_argument("--layers", type=int, help="encoder layers (default 1)")
    t.add_argument("--decoder-layers", type=int, help="decoder layers (default 1)")
    t.add_argument("--attention", choices=SCORES, help="attention score (default bahdanau)")
    t.add_argument("--dropout", type=float, help="dropout (default 0.2)")
    t.add_argument("--tie-embeddings", action="store_const", const=True,
                   help="output layer = target embedding (needs --embedding equal to --hidden)")
    t.add_argument("--max-length", type=int, help="longest sentence in tokens; longer ones are cut (default 128)")
    t.add_argument("--epochs", type=int, help="passes over the training pairs (default 30)")
    t.add_argument("--max-minutes", type=float, help="stop after this much training time, then save and evaluate")
    t.add_argument("--batch-size", type=int, help="pairs per batch (default 64)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 0.002)")
    t.add_argument("--label-smoothing", type=float, help="default 0.1")
    t.add_argument("--clip", type=float, help="gradient-norm clipping (default 1)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--device", help="auto, cpu, cuda, ... (default auto)")
    t.add_argument("--eval-every", type=int, help="also evaluate every N steps (default: every epoch)")
    t.add_argument("--checkpoint-every", type=int, help="save the trainer state every N steps (default 200)")
    t.add_argument("--early-stop", type=int, help="stop after N evaluations without improvement")
    t.add_argument("--bleu-sentences", type=int,
                   help="validation pairs translated for BLEU at each evaluation (default 400)")
    t.add_argument("--beam", type=int, default=5, help="beam width for the test split's BLEU at the end (default 5)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--force", action="store_true", help="write into --out even if it holds files that are not a model")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train, params={field: flag for flag, (_, field) in FLAGS.items()})

    e = commands.add_parser("evaluate", help="BLEU and chrF (sacrebleu) of a translator on parallel text")
    e.add_argument("model", type=Path, help="model directory")
    e.add_argument("--data", type=Path, required=True, help="a TSV file of source<TAB>reference lines")
    e.add_argument("--beam", type=int, default=5, help="beam width; 1 is greedy (default %(default)s)")
    e.add_argument("--length-penalty", type=float, default=1.0, help="scores / length ** this (default %(default)s)")
    e.add_argument("--device", default="cpu", help="default: %(default)s")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(run=run_evaluate)

    r = commands.add_parser("run", help="translate sentences (arguments, or lines on standard input)")
    r.add_argument("model", type=Path, help="model directory")
    r.add_argument("sentences", nargs="*", help='e.g. "Open the file"; none: one sentence per line of standard input')
    r.add_argument("--beam", type=int, default=5, help="beam width; 1 is greedy (default %(default)s)")
    r.add_argument("--length-penalty", type=float, default=1.0, help="scores / length ** this (default %(default)s)")
    r.add_argument("--attention-png", type=Path, help="write the first sentence's attention heat map here")
    r.add_argument("--device", default="cpu", help="default: %(default)s")
    r.add_argument("--json", action="store_true", help="one JSON object per sentence")
    r.set_defaults(run=run_translate)

    d = commands.add_parser("demo", help="build the gettext corpus, train a few minutes, translate, BLEU, heat map")
    d.add_argument("--out", type=Path, default=Path("runs/translate-demo"), help="default: %(default)s")
    d.add_argument("--lang", choices=GETTEXT_LANGUAGES, default="fr", help="default: %(default)s")
    d.add_argument("--minutes", type=float, default=4.0, help="training time (default %(default)s)")
    d.add_argument("--retrain", action="store_true", help="train again instead of using the model in --out")
    d.set_defaults(run=run_demo)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_data(args: argparse.Namespace) -> int:
    if args.source == "gettext":
        lang = args.lang or "fr"
        counts = gettext_corpus(lang, output_dir(args.out))
        total = counts["train"] + counts["valid"] + counts["test"]
        print(f"{total} English -> {lang} pairs from {counts['catalogs']} catalogs: train {counts['train']}, "
              f"valid {counts['valid']}, test {counts['test']}, in {args.out}")
        if total < MIN_GETTEXT_PAIRS:
            print(f"rnnkit: note: few pairs for translation; more Debian packages bring more catalogs: "
                  f"{more_catalogs_hint()}", file=sys.stderr)
    else:
        if args.count < 20:
            raise RnnkitError(f"--count must be at least 20, got {args.count}")
        counts = number_corpus(output_dir(args.out), args.count, args.lang or "de")
        print(f"number words 0 .. {args.count - 1}, English -> {args.lang or 'de'}: train {counts['train']}, "
              f"valid {counts['valid']}, test {counts['test']}, in {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    out: Path = args.out
    fields = config_fields(args, FLAGS)
    with training_into(args, Translator.kind, "a translator") as saved:
        if saved is not None:
            fields = {"model": {**saved["model"], **fields["model"]}, "train": {**saved.get("train", {}), **fields["train"]}}
            splits = load_pairs(args.data, args.target) if args.data is not None else load_pairs(out / "data")
            vocab = Vocabularies(load_tokenizer(out / SOURCE), load_tokenizer(out / TARGET))
        else:
            if args.data is None:
                raise RnnkitError("--data is needed: a folder with train.tsv, a TSV file, or a source file with --target "
                                  "(`rnnkit translate data gettext --out DIR` builds one)")
            splits = load_pairs(args.data, args.target)
            vocab = build_vocabularies(splits["train"], args.tokenizer, args.vocab_size, args.shared_vocab)
            write_splits(out / "data", splits)  # what --resume and the final test read
        config = TranslateTrainConfig.from_dict(fields["train"])
        model_config = TranslateConfig.from_dict({**fields["model"], "source_vocab_size": vocab.source.vocab_size,
                                                  "target_vocab_size": vocab.target.vocab_size})
        if not args.quiet:
            print(f"{len(splits['train'])} training pairs, {len(splits['valid'])} validation, {len(splits['test'])} test; "
                  f"vocabularies {vocab.source.vocab_size} / {vocab.target.vocab_size} ({vocab.source.kind})",
                  file=sys.stderr)
        summary = train_with_progress(args, lambda callbacks: train(out, splits, vocab, model_config, config,
                                                                    resume=args.resume, callbacks=callbacks))
        if summary is None:
            return 130
        results = finish_run(out, splits, summary, args.beam)
    bleu = (f", test BLEU {results['test_bleu']:.1f} (beam {args.beam}, {results['test_pairs']} pairs)"
            if "test_bleu" in results else "")
    print(f"{summary['stopped']} after {summary['steps']} steps: best valid loss {summary['best_valid']:.3f}{bleu}; "
          f"model in {out}")
    return 0


def _load(args: argparse.Namespace) -> tuple[Translator, Vocabularies]:
    return load_model(args.model, resolve_device(args.device), kind=Translator.kind)


def run_evaluate(args: argparse.Namespace) -> int:
    model, vocab = _load(args)
    result = evaluate(model, vocab, read_tsv(args.data), args.beam, args.length_penalty)
    if args.json:
        print(json.dumps({k: result[k] for k in ("bleu", "chrf", "pairs", "beam")} | {"signature": result["signature"]}))
    else:
        print(f"BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f} on {result['pairs']} pairs (beam {args.beam})")
        print(f"sacrebleu: {result['signature']['bleu']}  {result['signature']['chrf']}")
    return 0


def run_translate(args: argparse.Namespace) -> int:
    model, vocab = _load(args)
    sentences = args.sentences or [line.strip() for line in sys.stdin if line.strip()]
    if not sentences:
        raise RnnkitError("no sentence to translate: give one as an argument, or lines on standard input")
    translations = translate(model, vocab, sentences, args.beam, args.length_penalty)
    for t in translations:
        if t.encoded.truncated:
            print(f"rnnkit: warning: {t.encoded.truncated} token(s) beyond the model's limit of "
                  f"{model.config.max_length} were cut from {t.source[:40]!r}", file=sys.stderr)
        if t.encoded.unknown:
            print(f"rnnkit: warning: unknown to the model, read as <unk>: {', '.join(t.encoded.unknown)}", file=sys.stderr)
        print(json.dumps({"source": t.source, "translation": t.text, "score": t.score}, ensure_ascii=False)
              if args.json else t.text)
    if args.attention_png is not None:
        first = translations[0]
        save_figure(args.attention_png, plot_attention(attention_map(model, vocab, first), vocab, first))
        print(f"attention heat map of {first.source!r} in {args.attention_png}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..apps.translate.demo import format_report, run_demo as demo

    out = output_dir(args.out)
    return run_demo_with_progress(partial(demo, out, args.lang, args.minutes, retrain=args.retrain), format_report,
                                  out / "model")
