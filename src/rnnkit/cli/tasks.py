"""`rnnkit tasks adding|copy`: train each cell on a long-range memory task for several delays T,
with the same budget, and compare the final test loss with the memoryless baseline.

Writes into --out: <task>.json (settings and every curve), <task>.csv (the table) and
<task>.png (test loss against steps, one panel per T), and prints the table as runs finish.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..diagnostics import TASKS, TaskConfig, plot_task_curves, train_task
from ..io import save_figure, write_csv, write_json
from ..training import resolve_device
from .common import at_least, flag_values, int_list, name_list, output_dir


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="long-range memory tasks (adding problem, copy memory) for each cell and delay",
        description="Train every cell on a memory task for each delay T with the same budget; "
        "report the final test loss against the memoryless baseline.",
    )
    p.add_argument("task", choices=sorted(TASKS), help="adding: sum of two marked numbers; "
                   "copy: recall 10 symbols after T steps")
    p.add_argument("--cells", default="elman,lstm,gru", help="comma-separated cells (default: %(default)s)")
    p.add_argument("--lengths", default="50,100,200,400", help="comma-separated delays T (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units H (default: %(default)s)")
    p.add_argument("--layers", type=int, default=1, help="layers L (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=500, help="Adam steps per run (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--clip", type=float, default=1.0, help="largest gradient norm (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=500, help="test sequences per T (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between test evaluations (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and data (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--out", default="tasks", help="output folder (default: %(default)s)")
    p.set_defaults(run=run, params={"hidden_size": "hidden", "num_layers": "layers", "steps": "train_steps", "batch_size": "batch"})


def run(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    cells = name_list(args.cells)
    lengths = int_list(args.lengths, "--lengths", minimum=2 if task.name == "adding" else 1)
    for name in ("hidden", "layers", "batch", "test_size", "eval_every"):
        at_least(name, getattr(args, name), 1)
    at_least("train_steps", args.train_steps, 0)
    config = TaskConfig(
        hidden_size=args.hidden, num_layers=args.layers, steps=args.train_steps,
        batch_size=args.batch, lr=args.lr, clip=args.clip, test_size=args.test_size,
        eval_every=args.eval_every, seed=args.seed,
    )
    device = resolve_device(args.device)
    out = output_dir(args.out)

    metric = "MSE" if task.name == "adding" else "cross-entropy"
    print(f"{task.name}: {config.steps} steps of batch {config.batch_size}, H = {config.hidden_size}, "
          f"L = {config.num_layers}, Adam lr {config.lr:g}; solved: {task.criterion}")
    recall = task.accuracy is not None
    header = ["cell", "T", "test loss", "memoryless", "ratio", *(["accuracy"] if recall else []), "solved", "seconds"]
    print(f"test loss: {metric}; ratio: test loss / memoryless"
          + ("; accuracy: recalled symbols right" if recall else ""))
    width = max(map(len, cells)) + 2
    print(_line(header, width), flush=True)
    results, rows = [], []
    for T in lengths:
        for cell in cells:
            r = train_task(task, cell, T, config, device)
            results.append(r)
            row = [cell, T, f"{r.final_loss:.4g}", f"{r.baseline:.4g}", f"{r.final_loss / r.baseline:.3f}",
                   *([f"{r.accuracy:.3f}"] if recall else []), "yes" if r.solved else "no", f"{r.seconds:.1f}"]
            rows.append(row)
            print(_line(row, width), flush=True)

    write_json(out / f"{task.name}.json", {
        "settings": flag_values(args),
        "solved_when": task.criterion,
        "results": [r.to_dict() for r in results],
    })
    write_csv(out / f"{task.name}.csv", header, rows)
    save_figure(out / f"{task.name}.png", plot_task_curves(results))
    solved = sum(r.solved for r in results)
    print(f"solved {solved} of {len(results)}; wrote {out}/{task.name}.json, .csv and .png")
    return 0


def _line(cells: list, width: int) -> str:
    """One table row: cell (in `width` characters) and T to the left, the numbers right-aligned."""
    return "".join(f"{c!s:<{width}}" if i == 0 else f"{c!s:<5}" if i == 1 else f"{c!s:>11}" for i, c in enumerate(cells))
