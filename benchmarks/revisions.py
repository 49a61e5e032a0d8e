"""A language model's training step in this checkout against another revision of rnnkit, side by side.

For each case, fresh processes alternate between the two source trees (this one, then the other
revision's, checked out with `git worktree` into a temporary folder): each builds the case's model
(as `rnnkit.apps.lm.auto` builds it for a width and strength), takes two warm-up steps and times
--steps training steps (forward, backward, SGD or AdamW) on random ids, with bf16 autocast or in
float32, as the trainer runs them; where the source tree has `rnnkit.keep_freed_memory`, the process
calls it first, as the training loop does on a CPU. The median tokens/s of each, over --rounds
pairs, and their ratio. For a change to the model's step (its layers, dropout, loss, the allocator),
where `benchmarks/throughput.py` compares rnnkit with a plain loop in one process.

    python benchmarks/revisions.py --base HEAD~2 [--cases word300awd-bf16,char768-bf16] [--rounds 3]
        [--steps 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name -> (regime, width, regularisation strength, B, T, optimizer); the model as auto.model_fields builds it
CASES = {
    "word300awd": ("word", 300, 0.34, 20, 35, "sgd"),
    "word650awd": ("word", 650, 0.3, 20, 35, "sgd"),
    "char768": ("char", 768, 0.1, 64, 128, "adamw"),
}
VOCAB = {"word": 10_000, "char": 50}

_CHILD = """
import json, statistics, sys, time
import torch
import rnnkit
if hasattr(rnnkit, "keep_freed_memory"):
    rnnkit.keep_freed_memory()
from rnnkit.apps.lm.auto import model_fields
from rnnkit.apps.lm.model import LMConfig, RNNLanguageModel
regime, width, s, B, T, optimizer, vocab, bf16, steps = json.loads(sys.argv[1])
torch.manual_seed(0)
model = RNNLanguageModel(LMConfig(**model_fields(regime, width, vocab, s))).train()
opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)(model.parameters(), lr=1e-3)
ids = torch.randint(0, vocab, (T + 1, B))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss(ids[:-1], ids[1:])
    opt.zero_grad()
    loss.backward()
    opt.step()
step(); step()
times = []
for _ in range(steps):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(B * T / statistics.median(times))
"""


def tokens_per_s(src: Path, case: str, bf16: bool, steps: int) -> float:
    regime, width, s, B, T, optimizer = CASES[case]
    spec = json.dumps([regime, width, s, B, T, optimizer, VOCAB[regime], bf16, steps])
    done = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)}, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--cases", default="word300awd-bf16,word300awd-fp32,char768-bf16,char768-fp32,word650awd-bf16",
                        help=f"comma-separated CASE-bf16 or CASE-fp32, CASE one of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of processes per case")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = [c.strip().rsplit("-", 1) for c in args.cases.split(",")]
    if any(len(c) != 2 or c[0] not in CASES or c[1] not in ("bf16", "fp32") for c in cases):
        parser.error(f"unknown case in {args.cases!r}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        try:
            for name, precision in cases:
                here, there = [], []
                for _ in range(args.rounds):
                    here.append(tokens_per_s(ROOT / "src", name, precision == "bf16", args.steps))
                    there.append(tokens_per_s(base / "src", name, precision == "bf16", args.steps))
                row = {"case": f"{name}-{precision}", "this": statistics.median(here), "base": statistics.median(there),
                       "rounds": {"this": here, "base": there}}
                row["ratio"] = row["this"] / row["base"]
                rows.append(row)
                print(f"{row['case']}: {row['this']:,.0f} against {row['base']:,.0f} tokens/s, {row['ratio']:.2f}x",
                      file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    if args.json:
        print(json.dumps({"base": args.base, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
