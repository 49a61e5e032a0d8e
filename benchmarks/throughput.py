"""Training throughput of `rnnkit.train` against a plain PyTorch loop, and inference latency.

Training: the real trainer (`rnnkit.train`, one epoch, no checkpoints, the default
log_every) on a corpus of random token ids read through memmaps as `rnnkit train` reads them,
against a plain loop (nn.Embedding -> nn.LSTM / GRU / RNN -> nn.Linear -> cross-entropy, SGD,
gradient clipping, hidden state detached between windows) with the same shapes, seed, windows and
optimiser settings. The two run interleaved in one process, round after round (rnnkit, plain,
plain, rnnkit, ...), so that a noisy shared machine slows them alike; each round times the same
steps (after the first log_every, which warm up), and the medians give the ratio rnnkit / plain.
The trainer is timed between its own "step" reports, so its setup, final evaluation and saving
are not counted. Peak memory: CUDA's allocator peak over the timed steps, or on a CPU the peak
resident set of a fresh process that runs the loop once.

Processes (`--parts processes`): `rnnkit.train` launched by torchrun on 1 and on 2 processes
(`--processes 1,2`) with the same global batch, gloo on a CPU and NCCL on GPUs, in interleaved
rounds; tokens/s of the whole job between rank 0's step reports. torchrun gives each of several
processes one thread (OMP_NUM_THREADS=1) and a single process all of them, as a user gets them.

Inference (on the CPU, each model in a fresh process): `predict_next` latency (median and p95 over
200 calls, a 20-word prompt, warm model) and `sample` tokens/s (200 tokens, temperature 1 and
greedy), random weights.

Every part runs with `rnnkit.keep_freed_memory()`, as the `rnnkit` commands and the training loop
on a CPU set it (glibc keeps freed blocks mapped); the setting is process-wide, so the plain loop
gets it as well. On CUDA both loops train in bf16 autocast (float32 with --fp32); on a CPU in float32,
or in bf16 autocast with --cpu-bf16.

    python benchmarks/throughput.py [--quick] [--device cpu|cuda|auto] [--cells lstm,gru,rnn]
        [--shapes small,medium,char] [--parts train,inference,processes] [--processes 1,2] [--cpu-bf16]
        [--json] [--markdown docs/benchmarks.md]

No data set is needed (the ids are random). `--device cuda` without a GPU prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit import LMConfig, LMTrainConfig, RNNLanguageModel, keep_freed_memory, predict_next, sample, train
from rnnkit.data import EOS, UNK, Corpus, WordTokenizer
from rnnkit.io import atomic_write
from rnnkit.training.loop import DEFAULT_LR

from machine import host_info  # the script beside this one

V = 10_000  # vocabulary of the Penn Treebank (Mikolov's version)
SEED = 0
CLIP = 0.25  # the trainer's default
WARMUP = LMTrainConfig().log_every  # the trainer's first report comes after this many steps
TORCH_RNN = {"lstm": nn.LSTM, "gru": nn.GRU, "elman": nn.RNN}
CELL_NAMES = {"lstm": "lstm", "gru": "gru", "rnn": "elman", "elman": "elman"}  # flag -> rnnkit cell


@dataclass(frozen=True)
class Shape:
    hidden: int  # H
    layers: int  # L
    batch: int  # B
    bptt: int  # T
    embedding: int | None = None  # E; None: H
    vocab: int = V
    optimizer: str = "sgd"  # the trainer's default rate for it, in both loops


# Zaremba et al. 2014, section 4.1: the small and medium PTB models (without their dropout); a
# character model as people train one on a CPU (50 characters, as Mikolov's character-level PTB)
SHAPES = {
    "small": Shape(200, 2, 20, 20),
    "medium": Shape(650, 2, 20, 35),
    "char": Shape(512, 2, 64, 128, embedding=128, vocab=50, optimizer="adamw"),
}
QUICK_SHAPES = {"tiny": Shape(32, 2, 4, 8)}
GPU_BATCH = 128  # on a GPU each shape also runs with this many streams


@dataclass(frozen=True)
class Case:
    cell: str  # rnnkit's name: "lstm", "gru" or "elman"
    name: str  # "small", "medium", "small-b128", ...
    shape: Shape
    device: str
    bf16: bool  # the trainer's bf16 autocast (on CUDA by default, on a CPU with --cpu-bf16), mirrored by the plain loop

    @property
    def tokens_per_step(self) -> int:
        return self.shape.batch * self.shape.bptt


# ---------------------------------------------------------------- timing and memory of a span


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def _reset_rss_peak() -> bool:
    """Lower the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


class Span:
    """The timed steps of one loop: wall time (the GPU synchronised at both ends) and the memory
    peak within them: CUDA's allocator peak, or with `rss` the process's peak resident set."""

    def __init__(self, device: str, rss: bool = False) -> None:
        self.device, self.rss = device, rss
        self.seconds: float | None = None
        self.memory: dict[str, float | None] = {}

    def start(self) -> None:
        _sync(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif self.rss:
            # resetting VmHWM also lowers ru_maxrss, so the peak before it is read first
            self._before, self._reset = _maxrss_mib(), _reset_rss_peak()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.device == "cuda":
            self.memory = {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
        elif self.rss:
            loop = _vm_hwm_mib() if self._reset else None
            self.memory = {"loop_rss_mib": loop, "peak_rss_mib": max(self._before, _maxrss_mib())}


# ---------------------------------------------------------------- the two training loops


def make_corpus(directory: Path, case: Case, steps: int, tokenizer: WordTokenizer) -> Corpus:
    """Random ids for exactly `steps` full windows, in little-endian uint16 memmaps as
    `build_corpus` writes them, and small valid and test splits."""
    B, T = case.shape.batch, case.shape.bptt
    rng = np.random.default_rng(SEED)
    sizes = {"train": B * (steps * T + 1), "valid": 10 * (2 * T + 1), "test": 10 * (2 * T + 1)}
    splits = {}
    for name, n in sizes.items():
        path = directory / f"{name}.bin"
        rng.integers(0, case.shape.vocab, n).astype("<u2").tofile(path)
        splits[name] = np.memmap(path, dtype="<u2", mode="r", shape=(n,))
    return Corpus(tokenizer=tokenizer, directory=directory, **splits)


def run_rnnkit(case: Case, corpus: Corpus, directory: Path, steps: int, span: Span, timed: bool = True) -> None:
    """`rnnkit.train` over WARMUP + steps windows, timed from its report after step WARMUP to its
    report after the last step (both come before that step's optimizer update). Not `timed`: a
    process of a job other than rank 0, which gets no reports."""
    B, T = case.shape.batch, case.shape.bptt

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event == "step" and info["step"] == WARMUP:
            span.start()
        elif event == "step" and info["step"] == WARMUP + steps:
            span.stop()

    shape = case.shape
    model_config = LMConfig(vocab_size=shape.vocab, cell=case.cell, hidden_size=shape.hidden,
                            embedding_size=shape.embedding, num_layers=shape.layers)
    config = LMTrainConfig(
        epochs=1, batch_size=B, bptt=T, optimizer=shape.optimizer, lr=DEFAULT_LR[shape.optimizer], clip=CLIP,
        checkpoint_every=None, seed=SEED, device=case.device, bf16=case.bf16, cpu_bf16=case.bf16,
    )
    summary = train(directory, corpus, model_config, config, callback=on_event)
    if summary["steps"] != WARMUP + steps or (timed and span.seconds is None):
        raise RuntimeError(f"the trainer ran {summary['steps']} steps, expected {WARMUP + steps}")


class PlainLM(nn.Module):
    """The language model in plain PyTorch: nn.Embedding -> nn.LSTM / GRU / RNN -> nn.Linear."""

    def __init__(self, cell: str, shape: Shape) -> None:
        super().__init__()
        H, E = shape.hidden, shape.embedding or shape.hidden
        self.embedding = nn.Embedding(shape.vocab, E)
        self.rnn = TORCH_RNN[cell](E, H, shape.layers)
        self.head = nn.Linear(H, shape.vocab)

    def forward(self, ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        hidden, state = self.rnn(self.embedding(ids), state)  # (T, B, H)
        return self.head(hidden), state  # (T, B, V)


def run_plain(case: Case, ids: np.ndarray, warmup: int, steps: int, span: Span) -> None:
    """The plain loop over warmup + steps windows of `ids`, the timed span after the warm-up."""
    B, T, H, L = case.shape.batch, case.shape.bptt, case.shape.hidden, case.shape.layers
    device = torch.device(case.device)
    data = torch.from_numpy(ids.astype(np.int64)).view(B, -1).t().contiguous().to(device)  # (N / B, B)
    torch.manual_seed(SEED)
    model = PlainLM(case.cell, case.shape).to(device)
    lr = DEFAULT_LR[case.shape.optimizer]
    optimizer = (torch.optim.SGD(model.parameters(), lr=lr) if case.shape.optimizer == "sgd"
                 else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.bf16)
    h = torch.zeros(L, B, H, device=device)
    state: Any = (h, h.clone()) if case.cell == "lstm" else h
    for i in range(warmup + steps):
        if i == warmup:
            span.start()
        x, y = data[i * T : (i + 1) * T], data[i * T + 1 : (i + 1) * T + 1]  # (T, B)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
    span.stop()


def _tokenizer(vocab: int) -> WordTokenizer:
    return WordTokenizer([UNK, EOS, *(f"w{i}" for i in range(vocab - 2))])


def measure_memory(loop: str, case: Case, steps: int) -> dict[str, Any]:
    """Run one loop (WARMUP + `steps` windows) in this process, meant to be a fresh one; return
    its memory peaks."""
    span = Span("cpu", rss=True)
    with tempfile.TemporaryDirectory(prefix="rnnkit-throughput-") as tmp:
        corpus = make_corpus(Path(tmp), case, WARMUP + steps, _tokenizer(case.shape.vocab))
        if loop == "rnnkit":
            run_rnnkit(case, corpus, Path(tmp) / "model", steps, span)
        else:
            run_plain(case, np.asarray(corpus.train), WARMUP, steps, span)
    return span.memory


def in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's job (`measure_memory` or `bench_inference`) in a new Python process and
    return its result. One at a time: two loops with two threads each on two cores would crawl."""
    done = subprocess.run(
        [sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {spec['job']} run in a fresh process failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["job"] == "processes":
        return _process_round(spec)
    if spec["job"] == "memory":
        case = spec["case"]
        return measure_memory(spec["loop"], Case(**{**case, "shape": Shape(**case["shape"])}), spec["steps"])
    return bench_inference(**{**spec["args"], "shape": Shape(**spec["args"]["shape"])})


def _steps_for(case: Case, seconds: float) -> int:
    """Timed steps per round: about `seconds` of the plain loop, in whole reporting groups."""
    probe = Span(case.device)
    rng = np.random.default_rng(SEED)
    run_plain(case, rng.integers(0, case.shape.vocab, case.shape.batch * (5 * case.shape.bptt + 1)), 2, 3, probe)
    assert probe.seconds is not None
    groups = math.ceil(seconds / (probe.seconds / 3) / WARMUP)
    return WARMUP * min(max(groups, 1), 100)


def bench_training(case: Case, rounds: int, steps: int, memory_steps: int) -> dict[str, Any]:
    tokenizer = _tokenizer(case.shape.vocab)
    seconds: dict[str, list[float]] = {"rnnkit": [], "plain": []}
    memory: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rnnkit-throughput-") as tmp:
        corpus = make_corpus(Path(tmp), case, WARMUP + steps, tokenizer)
        ids = np.asarray(corpus.train)
        for r in range(rounds):
            for loop in ("rnnkit", "plain") if r % 2 == 0 else ("plain", "rnnkit"):
                span = Span(case.device)
                if loop == "rnnkit":
                    run_rnnkit(case, corpus, Path(tmp) / f"model-{r}", steps, span)
                else:
                    run_plain(case, ids, WARMUP, steps, span)
                assert span.seconds is not None
                seconds[loop].append(span.seconds)
                if case.device == "cuda":  # the largest peak of the rounds
                    peak = span.memory["peak_allocated_mib"]
                    memory[loop] = {"peak_allocated_mib": max(peak, memory.get(loop, {}).get("peak_allocated_mib", 0))}
    if case.device == "cpu":
        memory = {
            loop: in_fresh_process({"job": "memory", "loop": loop, "case": asdict(case), "steps": memory_steps})
            for loop in seconds
        }
    tokens = steps * case.tokens_per_step
    result: dict[str, Any] = {
        "cell": case.cell, "shape": case.name, **asdict(case.shape), "device": case.device,
        "bf16": case.bf16, "rounds": rounds, "steps": steps, "warmup_steps": WARMUP,
    }
    for loop, values in seconds.items():
        result[f"{loop}_tokens_per_s"] = tokens / statistics.median(values)
        result[f"{loop}_seconds"] = values
        result[f"{loop}_memory"] = memory[loop]
    result["rnnkit_over_plain"] = result["rnnkit_tokens_per_s"] / result["plain_tokens_per_s"]
    return result


# ---------------------------------------------------------------- several processes


def _process_round(spec: dict[str, Any]) -> dict[str, Any]:
    """One process of a torchrun job (or one alone): `run_rnnkit` on the corpus the parent wrote."""
    case = Case(**{**spec["case"], "shape": Shape(**spec["case"]["shape"])})
    directory = Path(spec["corpus"])
    splits = {name: np.memmap(directory / f"{name}.bin", dtype="<u2", mode="r") for name in ("train", "valid", "test")}
    corpus = Corpus(tokenizer=_tokenizer(case.shape.vocab), directory=directory, **splits)
    span = Span(case.device)
    run_rnnkit(case, corpus, Path(spec["model"]), spec["steps"], span, timed=os.environ.get("RANK", "0") == "0")
    return {"seconds": span.seconds, "threads": torch.get_num_threads()}


def bench_processes(case: Case, counts: list[int], rounds: int, steps: int) -> dict[str, Any]:
    tokenizer = _tokenizer(case.shape.vocab)
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    threads: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="rnnkit-processes-") as tmp:
        make_corpus(Path(tmp), case, WARMUP + steps, tokenizer)
        for r in range(rounds):
            for n in counts if r % 2 == 0 else counts[::-1]:
                spec = {"job": "processes", "case": asdict(case), "corpus": tmp, "model": f"{tmp}/model-{r}-{n}",
                        "steps": steps}
                done = subprocess.run(
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                     __file__, "--_child", json.dumps(spec)], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"the run on {n} processes failed:\n{done.stderr[-3000:]}")
                said = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
                out = next(o for o in said if o["seconds"] is not None)  # rank 0's: the others are not timed
                seconds[n].append(out["seconds"])
                threads[n] = out["threads"]
    tokens = steps * case.tokens_per_step
    result: dict[str, Any] = {"cell": case.cell, "shape": case.name, **asdict(case.shape), "device": case.device,
                              "rounds": rounds, "steps": steps, "processes": {}}
    for n in counts:
        result["processes"][str(n)] = {"tokens_per_s": tokens / statistics.median(seconds[n]), "seconds": seconds[n],
                                       "threads_per_process": threads[n]}
    base = result["processes"][str(counts[0])]["tokens_per_s"]
    for n in counts:
        result["processes"][str(n)]["speedup"] = result["processes"][str(n)]["tokens_per_s"] / base
    return result


# ---------------------------------------------------------------- inference


def bench_inference(cell: str, name: str, shape: Shape, calls: int, length: int, repeats: int) -> dict[str, Any]:
    """predict_next latency and sample throughput of a warm model with random weights, on the CPU.

    Run in a fresh process (`in_fresh_process`), as `rnnkit predict` runs: how long a call takes
    depends on what the process allocated before (glibc returns large freed blocks to the kernel
    until a larger one has been freed, and then the next call faults fresh pages in again)."""
    torch.manual_seed(SEED)
    config = LMConfig(vocab_size=shape.vocab, cell=cell, hidden_size=shape.hidden, embedding_size=shape.embedding,
                      num_layers=shape.layers)
    model = RNNLanguageModel(config).eval()
    tokenizer = _tokenizer(shape.vocab)
    prompt = " ".join(random.Random(SEED).choices([f"w{i}" for i in range(shape.vocab - 2)], k=20))
    return {"cell": cell, "model": name, **asdict(shape), "prompt_words": 20,
            **time_use(model, tokenizer, prompt, calls, length, repeats, {"sample": 1.0, "greedy": 0.0})}


def time_use(model: Any, tokenizer: Any, prompt: str, calls: int, length: int, repeats: int,
             temperatures: dict[str, float]) -> dict[str, Any]:
    """`predict_next` latency over `calls` warm calls (median, p95) and, for each label ->
    temperature, `sample` tokens/s over `length` tokens (the prompt's reading included; median of
    `repeats`): "predict_median_ms", "predict_p95_ms", "<label>_tokens_per_s", ..."""
    for _ in range(max(calls // 10, 2)):
        predict_next(model, tokenizer, prompt, top_k=5)
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        predict_next(model, tokenizer, prompt, top_k=5)
        latencies.append(1000 * (time.perf_counter() - start))
    result: dict[str, Any] = {
        "calls": calls, "predict_median_ms": statistics.median(latencies),
        "predict_p95_ms": statistics.quantiles(latencies, n=20, method="inclusive")[18],
        "generated_tokens": length, "repeats": repeats,
    }
    for label, temperature in temperatures.items():
        rates = []
        for r in range(repeats):
            start = time.perf_counter()
            for _ in sample(model, tokenizer, prompt, length=length, temperature=temperature, seed=r):
                pass
            rates.append(length / (time.perf_counter() - start))
        result[f"{label}_tokens_per_s"] = statistics.median(rates)
    return result


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    return {
        **host_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpu else None,
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "torch_threads": torch.get_num_threads(),
    }


def _memory_key(r: dict[str, Any]) -> str:
    """The memory figure a row shows: CUDA's peak, or the RSS peak of the timed steps where Linux
    could reset the mark (else the process's peak)."""
    if r["device"] == "cuda":
        return "peak_allocated_mib"
    return "loop_rss_mib" if r["rnnkit_memory"].get("loop_rss_mib") else "peak_rss_mib"


def _line_training(r: dict[str, Any]) -> str:
    key, mem = _memory_key(r), [r[f"{loop}_memory"] for loop in ("rnnkit", "plain")]
    return (
        f"{r['device']:4} {r['cell']:5} {r['shape']:10} B={r['batch']:<3} T={r['bptt']:<2} H={r['hidden']}x{r['layers']}"
        f"  rnnkit {r['rnnkit_tokens_per_s']:8.0f} tok/s  plain {r['plain_tokens_per_s']:8.0f} tok/s"
        f"  rnnkit/plain {r['rnnkit_over_plain']:.3f}  {key} rnnkit {mem[0][key]:.0f} plain {mem[1][key]:.0f}"
    )


def _line_processes(r: dict[str, Any]) -> str:
    figures = "  ".join(f"{n} proc x {p['threads_per_process']} thr {p['tokens_per_s']:8.0f} tok/s ({p['speedup']:.2f}x)"
                        for n, p in r["processes"].items())
    return f"{r['device']:4} {r['cell']:5} {r['shape']:10} B={r['batch']:<3} T={r['bptt']:<3} {figures}"


def _line_inference(r: dict[str, Any]) -> str:
    return (
        f"cpu  {r['cell']:5} {r['model']:6} predict median {r['predict_median_ms']:6.2f} ms"
        f"  p95 {r['predict_p95_ms']:6.2f} ms  sample {r['sample_tokens_per_s']:6.0f} tok/s"
        f"  greedy {r['greedy_tokens_per_s']:6.0f} tok/s"
    )


def markdown_section(report: dict[str, Any]) -> str:
    m, device = report["machine"], report["settings"]["device"]
    build = f"CUDA {m['cuda']}, cuDNN {m['cudnn']}" if m["cuda"] else "CPU build"
    where = f"{m['cpu']}, {m['cpu_count']} cores"
    if device == "cuda":
        where = f"{m['gpu']} (host: {where})"
    measured = (
        f"`python benchmarks/throughput.py {report['settings']['command']}`, measured {m['date']} on {where}; "
        f"PyTorch {m['torch']} ({build}), {m['torch_threads']} threads; random token ids."
    )
    lines = [f"## Throughput and latency: {'GPU' if device == 'cuda' else 'CPU'}", "", measured]
    if report["training"]:
        peak = "peak allocated" if device == "cuda" else "peak RSS"
        about = (
            "Training: tokens/s over the timed steps, median of interleaved rounds; rnnkit is `rnnkit.train` "
            "(timed between its step reports), plain is the same model in plain PyTorch"
            + (" (both in bf16 autocast)." if report["training"][0]["bf16"] else ".")
            + (" Peak memory: the CUDA allocator's peak over the timed steps." if device == "cuda" else
               " Peak memory: the resident set of a fresh process over the timed steps.")
        )
        header = (
            "| cell | shape | B | T | E, H x L | V | optimizer | rounds x steps | rnnkit (tok/s) | plain (tok/s) | rnnkit / plain "
            f"| rnnkit {peak} (MiB) | plain {peak} (MiB) |"
        )
        lines += ["", about, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["training"]:
            key, mem = _memory_key(r), [r[f"{loop}_memory"] for loop in ("rnnkit", "plain")]
            lines.append(
                f"| {r['cell']} | {r['shape']} | {r['batch']} | {r['bptt']} | {r['embedding'] or r['hidden']}, "
                f"{r['hidden']} x {r['layers']} | {r['vocab']} | {r['optimizer']} "
                f"| {r['rounds']} x {r['steps']} | {r['rnnkit_tokens_per_s']:.0f} | {r['plain_tokens_per_s']:.0f} "
                f"| {r['rnnkit_over_plain']:.3f} | {mem[0][key]:.0f} | {mem[1][key]:.0f} |"
            )
    if report["inference"]:
        first = report["inference"][0]
        about = (
            f"Inference on the CPU, random weights, batch 1: `predict_next` over {first['calls']} calls with a "
            f"{first['prompt_words']}-word prompt (warm model), and `sample` of {first['generated_tokens']} tokens "
            f"(the prompt's reading included; median of {first['repeats']})."
        )
        header = (
            "| cell | model | H x L | predict median (ms) | predict p95 (ms) "
            "| sample, temperature 1 (tok/s) | greedy (tok/s) |"
        )
        lines += ["", about, "", header, "|---|---|---|---|---|---|---|"]
        for r in report["inference"]:
            lines.append(
                f"| {r['cell']} | {r['model']} | {r['hidden']} x {r['layers']} | {r['predict_median_ms']:.2f} "
                f"| {r['predict_p95_ms']:.2f} | {r['sample_tokens_per_s']:.0f} | {r['greedy_tokens_per_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def markdown_processes(report: dict[str, Any]) -> str:
    m, device = report["machine"], report["settings"]["device"]
    where = f"{m['gpu']} (host: {m['cpu']})" if device == "cuda" else f"{m['cpu']}, {m['cpu_count']} cores"
    lines = [f"## Training on several processes: {'GPU' if device == 'cuda' else 'CPU'}", "",
             f"`python benchmarks/throughput.py {report['settings']['command']}`, measured {m['date']} on {where}; "
             f"PyTorch {m['torch']}; random token ids."]
    about = (
        "`rnnkit.train` under `torchrun --standalone --nproc-per-node N` with the "
        "same global batch (each process reads B / N streams), tokens/s of the whole job, median of interleaved "
        "rounds; speed-up against the first count."
    )
    counts = list(report["processes"][0]["processes"])
    header = "| cell | shape | B | T | E, H x L | " + " | ".join(
        f"{n} process{'es' if n != '1' else ''} (tok/s, speed-up)" for n in counts) + " |"
    lines += ["", about, "", header, "|---|---|---|---|---|" + "---|" * len(counts)]
    for r in report["processes"]:
        cells = " | ".join(f"{p['tokens_per_s']:.0f} ({p['speedup']:.2f}x; {p['threads_per_process']} thread"
                           f"{'s' if p['threads_per_process'] != 1 else ''} each)" for p in r["processes"].values())
        lines.append(f"| {r['cell']} | {r['shape']} | {r['batch']} | {r['bptt']} | {r['embedding'] or r['hidden']}, "
                     f"{r['hidden']} x {r['layers']} | {cells} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, key: str, section: str) -> None:
    """Put `section` between this script's markers in `path`, leaving the rest of the file (other
    benchmarks' sections) as it is; the file is replaced atomically."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`; each script rewrites only its own section.\n"
    )
    block = f"{start}\n{section}{end}"
    a, b = text.find(start), text.find(end)
    if 0 <= a < b:
        text = text[:a] + block + text[b + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few steps and calls: a few seconds (for CI)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="where to train (inference: CPU)")
    parser.add_argument("--cells", default="lstm", help="comma-separated: lstm, gru, rnn (default lstm)")
    parser.add_argument("--shapes", default="small,medium,char",
                        help="comma-separated: small, medium, char (on a GPU also B=128)")
    parser.add_argument("--parts", default="train,inference", help="comma-separated: train, inference, processes")
    parser.add_argument("--processes", default="1,2", help="processes: the process counts to compare (default 1,2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5, 2 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: about --seconds)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a timed span when --steps is not given")
    parser.add_argument("--fp32", action="store_true", help="on CUDA, train in float32 (default: bf16 autocast, as rnnkit train)")
    parser.add_argument("--cpu-bf16", action="store_true", help="on a CPU, train in bf16 autocast (as rnnkit train --cpu-bf16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with all results (progress to stderr)")
    parser.add_argument("--markdown", type=Path, help="write the tables into this file (e.g. docs/benchmarks.md)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)  # a measurement in a fresh process
    args = parser.parse_args()
    # as every `rnnkit` command and the training loop on a CPU set it; process-wide, so the plain
    # loop's rounds and the inference children run with it too, and the ratios compare the loops
    keep_freed_memory()
    if args._child:
        print(json.dumps(_child(json.loads(args._child))))
        return

    cells = [c.strip() for c in args.cells.split(",")]
    parts = {p.strip() for p in args.parts.split(",")}
    shapes = QUICK_SHAPES if args.quick else {name.strip(): SHAPES.get(name.strip()) for name in args.shapes.split(",")}
    bad = [c for c in cells if c not in CELL_NAMES] + [s for s, v in shapes.items() if v is None]
    bad += sorted(parts - {"train", "inference", "processes"})
    counts = [int(n) for n in args.processes.split(",") if n.strip().isdigit() and int(n) > 0]
    if len(counts) != len(args.processes.split(",")):
        bad.append(f"--processes {args.processes}")
    if bad or args.steps is not None and args.steps < 1 or args.rounds is not None and args.rounds < 1:
        parser.error(f"unknown or bad values: {', '.join(bad) or '--steps / --rounds must be positive'}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: skipped, --device cuda was asked for but no CUDA device is here (try --device cpu)")
        return
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
    rounds = args.rounds or (2 if args.quick else 5)
    bf16 = not args.fp32 if device == "cuda" else args.cpu_bf16
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    machine = machine_info()
    say(
        f"throughput.py: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads" + (f", {machine['gpu']}" if device == "cuda" else "")
    )

    training = []
    if "train" in parts:
        for cell in cells:
            for name, shape in shapes.items():
                variants = [(name, shape)]
                if device == "cuda":
                    variants.append((f"{name}-b{GPU_BATCH}", replace(shape, batch=GPU_BATCH)))
                for case_name, case_shape in variants:
                    case = Case(CELL_NAMES[cell], case_name, case_shape, device, bf16)
                    steps = args.steps or (WARMUP if args.quick else _steps_for(case, args.seconds))
                    training.append(bench_training(case, rounds, steps, memory_steps=WARMUP))
                    say(_line_training(training[-1]))
    processes = []
    if "processes" in parts:
        for cell in cells:
            for name, shape in shapes.items():
                case = Case(CELL_NAMES[cell], name, shape, device, bf16)
                steps = args.steps or (WARMUP if args.quick else _steps_for(case, args.seconds))
                processes.append(bench_processes(case, counts, rounds, steps))
                say(_line_processes(processes[-1]))
    inference = []
    if "inference" in parts:
        calls, length, repeats = (20, 20, 2) if args.quick else (200, 200, 5)
        for cell in cells:
            for name, shape in shapes.items():
                spec = {"cell": CELL_NAMES[cell], "name": name, "shape": asdict(shape), "calls": calls, "length": length,
                        "repeats": repeats}
                inference.append(in_fresh_process({"job": "inference", "args": spec}))
                say(_line_inference(inference[-1]))

    command = " ".join(sys.argv[1:])
    report = {
        "machine": machine,
        "settings": {"device": device, "command": command, "quick": args.quick, "rounds": rounds},
        "training": training,
        "processes": processes,
        "inference": inference,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    if args.markdown is not None:
        if training or inference:
            write_markdown(args.markdown, f"throughput:{device}", markdown_section(report))
        if processes:
            write_markdown(args.markdown, f"throughput-processes:{device}", markdown_processes(report))
        say(f"throughput.py: wrote the tables to {args.markdown}")


if __name__ == "__main__":
    main()
