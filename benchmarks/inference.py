"""Inference on the CPU, side by side: PyTorch float32, the ONNX export in onnxruntime (float32) and
its int8 and int4 forms (`rnnkit export MODEL --format onnx --int8 --int4`).

For each runtime, in a fresh process as `rnnkit predict` runs: `predict_next` latency (median and
p95 over --calls calls, a 20-token prompt, batch 1, warm) and `sample` tokens/s (temperature 1,
--length tokens, the prompt's reading included, median of --repeats). With --text, the perplexity
of each runtime over the text's first --tokens tokens, read through the decoding step with the state
carried (the streams and windows of `rnnkit evaluate`, one token at a time): the cost of int8 and
int4 in perplexity, on a trained model (--model).

    python benchmarks/inference.py [--model DIR] [--text FILE] [--tokens N] [--threads N] [--quick]
        [--json] [--markdown docs/benchmarks.md]

Without --model: a 2x650 LSTM with V = 10,000 and random weights (throughput.py's medium shape).
The model directory is copied to a temp folder and exported there; DIR itself is not written.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from rnnkit import LMConfig, LMTrainConfig, RNNLanguageModel
from rnnkit.apps.lm.onnx import FOLDER, GRAPHS, RUNTIMES as ONNX_RUNTIMES, export_directory, load_onnx
from rnnkit.apps.lm.task import TOKENIZER
from rnnkit.data import BPTTBatches, encode_to_file, load_tokenizer
from rnnkit.training import load_model
from rnnkit.training.checkpoint import CONFIG, WEIGHTS, save_model

from throughput import SEED, SHAPES, _tokenizer, machine_info, time_use, write_markdown  # the script beside this one

RUNTIMES = ("torch", *ONNX_RUNTIMES)
STREAMS, WINDOW = 10, 35  # `rnnkit evaluate`'s streams and window


def load(directory: Path, runtime: str, threads: int) -> tuple[Any, Any]:
    """The model as `rnnkit predict --runtime RUNTIME` loads it, on `threads` threads."""
    if runtime == "torch":
        torch.set_num_threads(threads)
        return load_model(directory, kind=RNNLanguageModel.kind)
    return load_onnx(directory, ONNX_RUNTIMES[runtime], threads)


def bench_runtime(directory: str, runtime: str, threads: int, calls: int, length: int, repeats: int) -> dict[str, Any]:
    """predict_next latency and sample throughput of one runtime (run in a fresh process)."""
    model, tokenizer = load(Path(directory), runtime, threads)
    ids = [i for i in random.Random(SEED).choices(range(tokenizer.vocab_size), k=40) if i != tokenizer.line_end_id]
    prompt = tokenizer.decode(ids[:20])
    return {"runtime": runtime, "prompt_tokens": len(tokenizer.encode_prompt(prompt)),
            **time_use(model, tokenizer, prompt, calls, length, repeats, {"sample": 1.0})}


@torch.no_grad()
def perplexity(model: Any, ids: Any) -> float:
    """exp of the mean -log p(next token), stepping through `ids` (STREAMS streams cut into windows
    as `rnnkit evaluate` cuts them) from the start state, the state carried throughout."""
    batches = BPTTBatches(ids, STREAMS, WINDOW, "cpu", name="--text")
    state, total, count = model.start_state(STREAMS), 0.0, 0
    for x, y in batches:  # (T, B) each
        for t in range(x.shape[0]):
            log_probs, state = model.step(x[t], state)  # (B, V)
            total -= float(log_probs.gather(1, y[t, :, None]).double().sum())
            count += y.shape[1]
    return math.exp(total / count)


def in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """`bench_runtime(**spec)` in a new Python process: what a call costs depends on what the
    process allocated before, and each runtime should start as `rnnkit predict` starts."""
    done = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {spec['runtime']} run failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def prepare(folder: Path, source: Path | None, quick: bool) -> dict[str, Any]:
    """A model directory in `folder` (a copy of `source`, or random weights), exported to ONNX in
    float32, int8 and int4; returns its description."""
    if source is None:
        shape = replace(SHAPES["medium"], hidden=32, vocab=200) if quick else SHAPES["medium"]
        torch.manual_seed(SEED)
        model = RNNLanguageModel(LMConfig(vocab_size=shape.vocab, cell="lstm", hidden_size=shape.hidden,
                                          num_layers=shape.layers)).eval()
        save_model(folder, model, {TOKENIZER: _tokenizer(shape.vocab)}, LMTrainConfig())
    else:
        folder.mkdir(parents=True)
        for name in (CONFIG, TOKENIZER, WEIGHTS):
            shutil.copy2(source / name, folder / name)
    start = time.perf_counter()
    export_directory(folder, ["int8", "int4"])
    config = json.loads((folder / CONFIG).read_text())["model"]
    return {
        "model": str(source) if source else "random weights", "cell": config["cell"], "hidden": config["hidden_size"],
        "layers": config["num_layers"], "vocab": config["vocab_size"], "export_s": time.perf_counter() - start,
        "mb": {name: (folder / path).stat().st_size / 1e6 for name, path in
               (("torch", WEIGHTS), *((r, f"{FOLDER}/{GRAPHS[p]}") for r, p in ONNX_RUNTIMES.items()))},
    }


def markdown_section(report: dict[str, Any]) -> str:
    m, model, s = report["machine"], report["model"], report["settings"]
    measured = (
        f"`python benchmarks/inference.py {s['command']}`, measured {m['date']} on {m['cpu']}, {m['cpu_count']} cores; "
        f"PyTorch {m['torch']}, onnxruntime {report['onnxruntime']}, "
        f"{s['threads']} thread{'s' if s['threads'] > 1 else ''} each."
    )
    about = (
        f"{model['cell'].upper()} {model['hidden']} x {model['layers']}, V = {model['vocab']}, {model['model']}; "
        f"batch 1: `predict_next` over {s['calls']} calls with a {report['runtimes'][0]['prompt_tokens']}-token "
        "prompt (warm), "
        f"`sample` of {s['length']} tokens at temperature 1 (the prompt's reading included; median of {s['repeats']}); "
        "each runtime in a fresh process. onnx, onnx-int8 and onnx-int4 are `rnnkit export MODEL --format onnx "
        "--int8 --int4`, run with `--runtime onnx|onnx-int8|onnx-int4`."
    )
    text = report.get("text")
    ppl = f" | perplexity, first {text['tokens']} tokens of {Path(text['file']).name}" if text else ""
    lines = ["## Inference runtimes: CPU", "", measured, "", about, "",
             f"| runtime | weights (MB) | predict median (ms) | predict p95 (ms) | sample (tok/s){ppl} |",
             "|---|---|---|---|---|" + ("---|" if text else "")]
    for r in report["runtimes"]:
        extra = f" | {text['perplexity'][r['runtime']]:.2f}" if text else ""
        lines.append(f"| {r['runtime']} | {model['mb'][r['runtime']]:.1f} | {r['predict_median_ms']:.2f} "
                     f"| {r['predict_p95_ms']:.2f} | {r['sample_tokens_per_s']:.0f}{extra} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a language model directory (default: random 2x650 LSTM, V=10000)")
    parser.add_argument("--text", type=Path, help="also the perplexity of each runtime over this text")
    parser.add_argument("--tokens", type=int, default=20_000, help="--text: its first N tokens (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of PyTorch and of onnxruntime (default %(default)s: on a shared machine a second "
                        "thread that waits for a busy core costs more than it gives at batch 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, few calls: a few seconds (for CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    parser.add_argument("--markdown", type=Path, help="write the table into this file (e.g. docs/benchmarks.md)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)  # one runtime in a fresh process
    args = parser.parse_args()
    if args._child:
        print(json.dumps(bench_runtime(**json.loads(args._child))))
        return
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.tokens < STREAMS * (WINDOW + 1):
        parser.error(f"--tokens must be at least {STREAMS * (WINDOW + 1)}: one window of each of {STREAMS} streams")
    calls, length, repeats = (20, 20, 2) if args.quick else (200, 200, 5)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    machine = machine_info()
    say(f"inference.py: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory(prefix="rnnkit-inference-") as tmp:
        directory = Path(tmp) / "model"
        model = prepare(directory, args.model, args.quick)
        say(f"exported in {model['export_s']:.1f} s: " + ", ".join(f"{k} {v:.1f} MB" for k, v in model["mb"].items()))
        runtimes = []
        for runtime in RUNTIMES:
            runtimes.append(in_fresh_process({"directory": str(directory), "runtime": runtime, "threads": args.threads,
                                              "calls": calls, "length": length, "repeats": repeats}))
            r = runtimes[-1]
            say(f"{runtime:9}  predict median {r['predict_median_ms']:6.2f} ms  p95 {r['predict_p95_ms']:6.2f} ms"
                f"  sample {r['sample_tokens_per_s']:6.0f} tok/s")
        text = None
        if args.text is not None:
            tokenizer = load_tokenizer(directory / TOKENIZER)
            ids = encode_to_file(args.text, tokenizer, Path(tmp) / "ids.bin", "--text")[: args.tokens]
            text = {"file": str(args.text), "tokens": len(ids), "perplexity": {}}
            for runtime in RUNTIMES:
                text["perplexity"][runtime] = perplexity(load(directory, runtime, args.threads)[0], ids)
                say(f"{runtime:9}  perplexity {text['perplexity'][runtime]:.3f} over {len(ids)} tokens")
    report = {"machine": machine, "onnxruntime": onnxruntime.__version__, "model": model, "runtimes": runtimes,
              "text": text, "settings": {"command": " ".join(sys.argv[1:]), "calls": calls, "length": length,
                                         "repeats": repeats, "threads": args.threads, "quick": args.quick}}
    if args.json:
        print(json.dumps(report, indent=2))
    if args.markdown is not None:
        write_markdown(args.markdown, "inference:cpu", markdown_section(report))
        say(f"inference.py: wrote the table to {args.markdown}")


if __name__ == "__main__":
    main()
