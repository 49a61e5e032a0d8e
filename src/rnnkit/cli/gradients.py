"""`rnnkit gradients [DIR]`: watch the gradient vanish through time, cell against cell, or in a
trained language model directory.

Writes into --out: iterated_tanh.png/.csv (the seed's intuition) and gradient_flow.png/.json/.csv
(||dL/ds_t|| at every lag for each cell, at initialisation and, with --train-steps, after
training on the adding problem), and prints for each cell the lag at which the gradient falls
below 1e-3 of its value at the last step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..apps.lm import RNNLanguageModel
from ..data import encode_to_file, open_corpus
from ..diagnostics import (
    TASKS,
    GradientFlow,
    TaskConfig,
    adding_flow,
    fit_task,
    iterated_tanh,
    language_model_flow,
    make_task_model,
    plot_gradient_flow,
    plot_iterated_tanh,
)
from ..io import save_figure, write_csv, write_json
from ..training import load_model, read_config, resolve_device
from .common import at_least, flag_values, name_list, output_dir

RATIO = 1e-3  # "vanished": below this fraction of the gradient at lag 0
TEST_SIZE = 256  # held-out adding-problem sequences for the MSE; the first --batch are measured


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gradients",
        help="gradient flow through time for Elman, LSTM and GRU cells",
        description="Measure ||dL/dh_t|| for the loss at the last step against every earlier "
        "state, for fresh cells at initialisation and (with --train-steps) after training on "
        "the adding problem; write PNG, JSON and CSV into --out.",
    )
    p.add_argument("model", nargs="?", type=Path,
                   help="a trained model directory: measure its gradient flow on its own text instead of fresh cells")
    p.add_argument("--data", type=Path,
                   help="with a model directory: the text to measure on (default: its validation split)")
    p.add_argument("--cells", default="elman,lstm,gru", help="comma-separated cells (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128, help="hidden units H (default: %(default)s)")
    p.add_argument("--layers", type=int, default=1, help="layers L (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="sequence length T (default: %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="sequences the norms average over (default: %(default)s)")
    p.add_argument("--jacobian-batch", type=int, default=4,
                   help="sequences for the step Jacobians, 0 to skip them (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="train each cell this many steps on the adding problem of length T, then "
                   "measure again (default: %(default)s)")
    p.add_argument("--train-batch", type=int, default=32, help="training batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--tanh-depth", type=int, default=10, help="plot tanh applied 1..N times (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and data (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--out", default="gradients", help="output folder (default: %(default)s)")
    p.set_defaults(run=run, params={"hidden_size": "hidden", "num_layers": "layers", "steps": "train_steps", "batch_size": "train_batch"})


def run(args: argparse.Namespace) -> int:
    cells = name_list(args.cells)
    for name in ("hidden", "layers", "batch", "tanh_depth", "train_batch"):
        at_least(name, getattr(args, name), 1)
    at_least("steps", args.steps, 2)
    at_least("train_steps", args.train_steps, 0)
    at_least("jacobian_batch", args.jacobian_batch, 0)
    config = TaskConfig(
        hidden_size=args.hidden, num_layers=args.layers, steps=args.train_steps,
        batch_size=args.train_batch, lr=args.lr, test_size=max(TEST_SIZE, args.batch),
        eval_every=max(1, args.train_steps), seed=args.seed,
    )
    device = resolve_device(args.device)
    out = output_dir(args.out)

    # 1. the seed's picture: tanh applied n times flattens, and so does its derivative
    x = torch.linspace(-3, 3, 241, dtype=torch.float64)
    values, derivatives = iterated_tanh(x, args.tanh_depth)
    n = range(1, args.tanh_depth + 1)
    table = torch.cat([x[None], values, derivatives]).T  # (241, 1 + 2N)
    write_csv(out / "iterated_tanh.csv", ["x", *(f"tanh^{j}" for j in n), *(f"d tanh^{j}/dx" for j in n)],
              [[f"{v:.8g}" for v in row] for row in table.tolist()])
    save_figure(out / "iterated_tanh.png", plot_iterated_tanh(x, values, derivatives))

    # 2. gradient flow per cell, on the adding problem's held-out sequences
    task, T = TASKS["adding"], args.steps
    flows: dict[str, dict[str, GradientFlow]] = {}
    mse: dict[str, dict[str, float]] = {}
    for cell in [] if args.model is not None else cells:
        model = make_task_model(task, cell, config).to(device)
        flows[cell] = {"init": adding_flow(model, T, config, args.batch, args.jacobian_batch)}
        if args.train_steps:
            result = fit_task(model, task, T, config)
            flows[cell]["trained"] = adding_flow(model, T, config, args.batch, args.jacobian_batch)
            mse[cell] = {"init": result.test_loss[0], "trained": result.final_loss}
            print(f"{cell}: trained {args.train_steps} steps on the adding problem (T = {T}): "
                  f"MSE {result.test_loss[0]:.4f} -> {result.final_loss:.4f} "
                  f"on {config.test_size} held-out sequences (predicting 1: {task.baseline(T):.4f})", flush=True)

    if args.model is not None:
        flows[_model_name(args.model)] = {"trained": _model_flow(args, device)}
    settings = flag_values(args)
    write_json(out / "gradient_flow.json", {
        "settings": settings,
        "loss": "MSE of the adding problem at the last step, float64",
        "adding_mse": mse,
        "flows": {c: {p: f.to_dict() for p, f in by.items()} for c, by in flows.items()},
    })
    rows = []
    for cell, by in flows.items():
        for phase, f in by.items():
            ratios = f.ratios()
            for k in range(len(f.grad_norms)):
                for lag in range(f.steps):
                    jac = None if f.jacobian_norms is None else f.jacobian_norms[k, lag]
                    rows.append([cell, phase, k, lag, f.grad_norms[k, lag], ratios[k, lag], jac])
    write_csv(out / "gradient_flow.csv",
              ["cell", "phase", "layer", "lag", "grad_norm", "ratio_to_lag0", "jacobian_norm"], rows)
    save_figure(out / "gradient_flow.png", plot_gradient_flow(flows, RATIO))

    size = "" if args.model is not None else f", H = {args.hidden}"
    print(f"first lag k at which ||dL/dh_(T-k)|| < {RATIO:g} x ||dL/dh_T|| (T = {T}{size}):")
    width = max(map(len, flows))
    for cell, by in flows.items():
        for phase, f in by.items():
            for k in range(len(f.grad_norms)):
                lag = f.vanishing_lag(k, RATIO)
                where = f"lag {lag}" if lag is not None else f"not within T = {T}"
                layer = f"  layer {k}" if len(f.grad_norms) > 1 else ""
                spectrum = ""
                if f.spectral_radius is not None:
                    spectrum = f"   rho(W) = {f.spectral_radius[k]:.3f}, ||W||_2 = {f.spectral_norm[k]:.3f}"
                print(f"  {cell:<{width}} {phase:<8}{layer}  {where}{spectrum}")
    print(f"wrote {out}/: iterated_tanh.png/.csv, gradient_flow.png/.json/.csv")
    return 0


def _model_name(directory: Path) -> str:
    return f"{read_config(directory)['model']['cell']} ({directory.name})"


def _model_flow(args: argparse.Namespace, device: torch.device) -> GradientFlow:
    model, tokenizer = load_model(args.model, device, kind=RNNLanguageModel.kind)
    if args.data is None:
        return language_model_flow(model, open_corpus(args.model / "data", tokenizer).valid, args.batch, args.steps,
                                   args.jacobian_batch)
    with tempfile.TemporaryDirectory(prefix="rnnkit-gradients-") as tmp:
        ids = encode_to_file(args.data, tokenizer, Path(tmp) / "ids.bin", "--data text")
        return language_model_flow(model, ids, args.batch, args.steps, args.jacobian_batch)
