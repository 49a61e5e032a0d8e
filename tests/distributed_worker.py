"""Trains a small language model with `rnnkit.training.fit`, alone or as one process of a torchrun
job, and writes the last weights (rank 0) and every reported loss to --out. Run by
tests/test_distributed.py:

    python tests/distributed_worker.py --out W [--dtype float64] [--batch-size 8] ...
    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py --out W ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from rnnkit import LMConfig, LMTrainConfig, RNNLanguageModel
from rnnkit.apps.lm import LMTask
from rnnkit.data import build_corpus
from rnnkit.training import distributed, fit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--optimizer", default="sgd")
    args = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    rng = random.Random(0)
    words = "the cat dog sat on a mat big red ran".split()
    text = args.out / f"text-{rank}.txt"  # each process its own copy: nothing is shared but the job
    args.out.mkdir(parents=True, exist_ok=True)
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(1500)))
    corpus = build_corpus(text, out_dir=args.out / f"data-{rank}")
    config = LMTrainConfig(batch_size=args.batch_size, bptt=10, epochs=args.epochs, accumulate=args.accumulate,
                           optimizer=args.optimizer, log_every=1, checkpoint_every=None, device="cpu")
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig(vocab_size=corpus.tokenizer.vocab_size, cell=args.cell, hidden_size=16,
                                      embedding_size=8, num_layers=2)).to(getattr(torch, args.dtype))
    losses: list[float] = []
    summary = fit(model, LMTask(corpus, config), config,
                  callbacks=[lambda event, info: losses.append(info["loss"]) if event == "step" else None])
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out / "weights.safetensors")
        (args.out / "summary.json").write_text(json.dumps({"losses": losses, "world_size": summary["world_size"],
                                                           "history": summary["history"]}))
    distributed.leave(distributed.current())  # together, as a script under torchrun should


if __name__ == "__main__":
    main()
