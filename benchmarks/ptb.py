"""Quality on the Penn Treebank: train a preset recipe with `rnnkit train`, as a user would, and
record valid/test perplexity, wall time and tokens/s; plot validation perplexity against time.

    python benchmarks/ptb.py --recipe ptb-cpu                 # the 15-minute CPU recipe
    python benchmarks/ptb.py --recipe ptb-small               # Zaremba et al. 2014 small, 13 epochs
    python benchmarks/ptb.py --recipe ptb-medium --device cuda
    python benchmarks/ptb.py --recipe auto --minutes 30       # no flags: the model the rule fits (apps/lm/auto.py)
    python benchmarks/ptb.py --recipe auto --minutes 5 --fraction 0.05   # on the first 5% of the training text
    python benchmarks/ptb.py --recipe auto --minutes 30 --char           # character level (Mikolov's ptb.char)
    python benchmarks/ptb.py --quick                          # a few seconds, on a slice of the data
    python benchmarks/ptb.py --plot                           # redraw the figure from docs/runs/

With --record a finished run is kept as docs/runs/<recipe>-<cpu|gpu>.json (results and every
evaluation), and the table in docs/benchmarks.md and docs/img/ptb-valid-vs-time.png are redrawn
from all the runs kept there (--plot redraws them alone). Recipes are the presets
in src/rnnkit/apps/lm/presets/ (`rnnkit train --config NAME`), or `auto`: `rnnkit train` with no model
flag and `--max-minutes`, as a user with only a time budget would run it. --char reads PTB as
characters, as Mikolov's ptb.char.* files do (`_` for spaces, a line end after every sentence), and
reports bits per character. The data comes from --data (default: the
shared copy beside the project, else `rnnkit data get ptb`'s folder); the script says so and exits
0 when it is absent, and likewise when a GPU recipe finds no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# a sibling script: benchmarks/ is on the path when this one runs
from throughput import machine_info, write_markdown

from rnnkit.cli import main as rnnkit
from rnnkit.apps.lm.presets import preset_path
from rnnkit.io import save_figure, write_json
from rnnkit.errors import RnnkitError
from rnnkit.data.datasets import split_paths

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "ptb"
FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
GPU_RECIPES = {"ptb-medium", "ptb-large"}
# test perplexity published for each recipe's model (Zaremba et al. 2014), for the table and plot
PUBLISHED = {"ptb-small": 114.5, "ptb-medium": 82.7, "ptb-large": 78.4, "ptb-medium-plateau": 82.7}
# goals: Zaremba small's test perplexity in at most 15 CPU minutes; issue 17's in 30 minutes
TARGET = {"ptb-cpu": 114.5, "ptb-auto-30min": 90, "ptb-char-auto-30min": "1.45 bpc", "ptb-auto-bf16-30min": 90,
          "ptb-char-auto-bf16-30min": "1.45 bpc", "ptb-auto-bf16-30min-epyc": 90, "ptb-char-auto-bf16-30min-epyc": "1.45 bpc"}


def find_data(path: str | None) -> dict[str, Path] | None:
    """The three PTB files by split: in --data, else the shared copy, else `rnnkit data get ptb`'s."""
    folders = [Path(path)] if path else [SHARED]
    for folder in folders:
        if all((folder / f).is_file() for f in FILES.values()):
            return {split: folder / f for split, f in FILES.items()}
    if path:
        return None
    try:
        return split_paths("ptb")
    except RnnkitError:
        return None


def machine() -> dict:
    info = machine_info()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def _slice(data: dict[str, Path], into: Path, lines: int) -> dict[str, Path]:
    """The first `lines` lines of each split, for --quick."""
    into.mkdir(parents=True, exist_ok=True)
    for split, path in data.items():
        with open(path, encoding="utf-8") as f:
            (into / FILES[split]).write_text("".join(line for _, line in zip(range(lines), f)), encoding="utf-8")
    return {split: into / name for split, name in FILES.items()}


def _fraction(data: dict[str, Path], into: Path, fraction: float) -> dict[str, Path]:
    """The first `fraction` of the training lines; the validation and test texts whole."""
    into.mkdir(parents=True, exist_ok=True)
    lines = data["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    (into / FILES["train"]).write_text("".join(lines[: round(len(lines) * fraction)]), encoding="utf-8")
    return {**data, "train": into / FILES["train"]}


def _characters(data: dict[str, Path], into: Path) -> dict[str, Path]:
    """PTB as Mikolov's ptb.char.* files read it: the characters of each sentence, `_` between words."""
    into.mkdir(parents=True, exist_ok=True)
    for split, path in data.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        (into / FILES[split]).write_text("".join("_".join(line.split()) + "\n" for line in lines), encoding="utf-8")
    return {split: into / name for split, name in FILES.items()}


def run_recipe(recipe: str, data: dict[str, Path], out: Path, device: str, extra: list[str]) -> dict:
    """`rnnkit train --config recipe` (for `auto`: no --config) on the PTB splits; returns
    results.json with tokens/s added."""
    config = [] if recipe == "auto" else ["--config", recipe]
    args = ["train", *config, "--out", str(out), "--device", device,
            f"--data={data['train']}", f"--valid={data['valid']}", f"--test={data['test']}", *extra]
    print("rnnkit " + " ".join(args), file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the results (--json)
        code = rnnkit(args)
    if code != 0:
        raise SystemExit(f"ptb.py: rnnkit train failed with status {code}")
    results = json.loads((out / "results.json").read_text())
    history = results["history"]
    train_tokens = json.loads((out / "data" / "corpus.json").read_text())["splits"]["train"]["tokens"]
    epochs = history[-1]["epoch"]  # fractional when the time budget ended an epoch
    results["train_seconds"] = history[-1]["elapsed_s"]
    results["tokens_per_s"] = train_tokens * epochs / max(history[-1]["elapsed_s"], 1e-9)
    results["config"] = json.loads((out / "config.json").read_text())
    if json.loads((out / "tokenizer.json").read_text()).get("kind") == "char":
        results["test_bits_per_char"] = results["test_loss"] / math.log(2)
        results["valid_bits_per_char"] = results["best_valid"] / math.log(2)
    return results


def recorded(runs_dir: Path) -> list[tuple[str, dict]]:
    """The runs kept in docs/runs/, by file name."""
    runs = [(p.stem, json.loads(p.read_text())) for p in sorted(runs_dir.glob("ptb-*.json"))]
    return [(name, r) for name, r in runs if "history" in r and "machine" in r]


def _where(r: dict) -> str:
    m = r["machine"]
    return m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores"


def _model(r: dict) -> str:
    m = r["config"]["model"] if "config" in r else {}
    if not m:
        return "-"
    embedding = "tied" if m.get("tie_weights") else f"E {m.get('embedding_size') or m['hidden_size']}"
    awd = [f"{name} {m[field]:g}" for name, field in (("input", "dropout_input"), ("embedding", "dropout_embedding"),
                                                       ("weight drop", "weight_drop")) if m.get(field)]
    awd += ["variational"] * bool(m.get("variational"))
    return (f"{m['num_layers']}x{m['hidden_size']} {m['cell']}, {embedding}, dropout {m.get('dropout', 0):g}"
            + "".join(f", {part}" for part in awd))


def _published(recipe: str) -> str:
    if recipe in PUBLISHED:
        return str(PUBLISHED[recipe])
    return f"goal: {TARGET[recipe]}" if recipe in TARGET else "-"


def table(runs_dir: Path) -> str:
    """The markdown section of docs/benchmarks.md: one row per recorded run."""
    lines = [
        "## Penn Treebank: perplexity against time",
        "",
        ("`python benchmarks/ptb.py --recipe NAME --record` trains a preset (`rnnkit train --config NAME`) on the "
         "Penn Treebank; wall time includes the evaluations; tokens/s = training tokens / wall time."),
        "",
        ("Perplexity per word; the character-level rows give bits per character. `auto` rows are `rnnkit train` "
         "with only `--max-minutes` (the model column is what the rule chose); a percentage is the share of "
         "the training text read (the first lines), validated and tested on the whole splits."),
        "",
        "| recipe | model | machine | PyTorch | date | epochs | minutes | tokens/s | best valid | test | published test |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in recorded(runs_dir):
        char = "test_bits_per_char" in r
        valid, test = ((f"{r['valid_bits_per_char']:.3f} bpc", f"{r['test_bits_per_char']:.3f} bpc") if char else
                       (f"{math.exp(r['best_valid']):.2f}", f"{r['test_perplexity']:.2f}"))
        lines.append(
            f"| {r['recipe']} | {_model(r)} | {_where(r)} | {r['machine']['torch']} | {r['machine']['date'][:10]} "
            f"| {r['history'][-1]['epoch']:.2f} | {r['train_seconds'] / 60:.1f} | {r['tokens_per_s']:.0f} "
            f"| {valid} | {test} | {_published(r['recipe'])} |"
        )
    lines += ["", "![validation perplexity against time](img/ptb-valid-vs-time.png)"]
    return "\n".join(lines) + "\n"


def plot(runs_dir: Path, out: Path) -> Path | None:
    """Validation perplexity against wall-clock minutes, one line per recorded run."""
    from matplotlib.figure import Figure

    # per word, on the whole training text (the slices' rows are in the table)
    runs = [(name, r) for name, r in recorded(runs_dir) if "test_bits_per_char" not in r and "pct" not in r["recipe"]]
    if not runs:
        return None
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, r in runs:
        minutes = [h["elapsed_s"] / 60 for h in r["history"]]
        label = f"{r['recipe']} on {r['machine'].get('gpu') or 'the CPU'}: test {r['test_perplexity']:.1f}"
        ax.plot(minutes, [h["valid_perplexity"] for h in r["history"]], "o-", ms=3, lw=1.4, label=label)
    for value in sorted({PUBLISHED[r["recipe"]] for _, r in runs if r["recipe"] in PUBLISHED}):
        ax.axhline(value, color="grey", lw=0.8, ls=":")
        ax.annotate(f"published test {value}", (0, value), xycoords=("axes fraction", "data"), fontsize=7,
                    color="grey", va="bottom")
    ax.set_yscale("log")
    ticks = [70, 80, 90, 100, 120, 150, 200, 300, 400]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="wall-clock minutes of training", ylabel="validation perplexity",
           title="Penn Treebank: validation perplexity against training time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(out, fig, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="ptb-cpu", help="a preset name or config file (default: %(default)s)")
    p.add_argument("--data", help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    p.add_argument("--out", help="model directory (default: a temporary one)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--minutes", type=float, help="the time budget (--max-minutes); required by --recipe auto")
    p.add_argument("--fraction", type=float, help="train on this share of the training text (its first lines)")
    p.add_argument("--char", action="store_true", help="character level, as Mikolov's ptb.char files")
    p.add_argument("--name", help="the run's name in docs/runs and the table (default: from the options)")
    p.add_argument("--quick", action="store_true", help="a few seconds on the first 300 lines, to check the path")
    p.add_argument("--record", action="store_true", help="keep the results in docs/runs/ and redraw the plot")
    p.add_argument("--plot", action="store_true", help="only redraw docs/img/ptb-valid-vs-time.png")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args()
    figure = ROOT / "docs" / "img" / "ptb-valid-vs-time.png"
    if args.plot:
        print(f"wrote {plot(ROOT / 'docs' / 'runs', figure)}")
        write_markdown(ROOT / "docs" / "benchmarks.md", "ptb", table(ROOT / "docs" / "runs"))
        return 0

    data = find_data(args.data)
    if data is None:
        where = args.data or f"{SHARED} nor in rnnkit's data folder"
        print(f"skipped: the Penn Treebank is not in {where} (get it with `rnnkit data get ptb`)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda, but no GPU is available here")
        return 0
    if args.recipe == "auto" and args.minutes is None:
        raise SystemExit("ptb.py: --recipe auto needs --minutes (the budget the rule fits the model to)")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise SystemExit(f"ptb.py: --fraction must be in (0, 1], got {args.fraction}")
    if Path(args.recipe).stem in GPU_RECIPES and args.device == "cpu" and not args.quick:
        print(f"skipped: {args.recipe} is a GPU recipe (hours on a CPU); run it with --device cuda")
        return 0
    if args.recipe != "auto":
        preset_path(Path(args.recipe))  # a clear error before any work

    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if args.minutes is None else ["--max-minutes", str(args.minutes)]
        if args.char:
            data = _characters(data, Path(tmp) / "char")
            extra += ["--tokenizer", "char"]
        if args.fraction is not None:
            data = _fraction(data, Path(tmp) / "fraction", args.fraction)
        if args.quick:
            data = _slice(data, Path(tmp) / "data", 300)
            extra += ["--max-minutes", "0.2"] * (args.minutes is None) + ["--quiet"]
            extra += [] if args.recipe == "auto" else ["--hidden", "16", "--epochs", "1"]
        out = Path(args.out) if args.out else Path(tmp) / "model"
        results = run_recipe(args.recipe, data, out, args.device, extra)
    parts = [] if Path(args.recipe).stem.startswith("ptb") else ["ptb"]
    parts += ["char"] * args.char + [Path(args.recipe).stem]
    parts += [] if args.fraction is None else [f"{args.fraction * 100:g}pct"]
    parts += [] if args.minutes is None else [f"{args.minutes:g}min"]
    name = args.name or "-".join(parts)
    results |= {"recipe": name, "machine": machine(), "quick": args.quick}
    if args.record and not args.quick:
        where = "gpu" if args.device == "cuda" else "cpu"
        write_json(ROOT / "docs" / "runs" / f"{results['recipe']}-{where}.json", results)
        plot(ROOT / "docs" / "runs", figure)
        write_markdown(ROOT / "docs" / "benchmarks.md", "ptb", table(ROOT / "docs" / "runs"))
    if args.json:
        print(json.dumps(results))
    else:
        best = math.exp(min(results["best_valid"], 700))
        bpc = f" ({results['test_bits_per_char']:.3f} bits per character)" if "test_bits_per_char" in results else ""
        print(f"{results['recipe']}: valid {best:.2f}, test {results['test_perplexity']:.2f}{bpc} "
              f"(published {_published(results['recipe'])}), {results['train_seconds'] / 60:.1f} min, "
              f"{results['epochs_done']} epochs, {results['tokens_per_s']:.0f} tokens/s on {_where(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
