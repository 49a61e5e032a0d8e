"""minGRU and minLSTM layers trained with the scan, against torch.nn.GRU / LSTM and the step loop.

For each cell and length T: one forward and backward pass (the sum of the outputs as the loss)
through one layer of B = 64, E = H = 512, of

    scan        Recurrent(cell, backend="scan") with the device's default method (rnnkit.nn.scan.DEFAULTS)
    torch       torch.nn.GRU for minGRU, torch.nn.LSTM for minLSTM (the fused kernel: oneDNN, cuDNN)
    reference   Recurrent(cell, backend="reference"): the step loop through the cell
    each --methods entry: the scan with that method and chunk ("chunked:16", "log:1", ...)

interleaved round after round on the same input (the order alternating), medians reported; and
the memory each keeps for its backward pass (the saved tensors' bytes, counted with
torch.autograd.graph.saved_tensors_hooks; on CUDA also the allocator's peak).

    python benchmarks/scan.py [--device cpu|cuda] [--json] [--quick] [--plot docs/img/scan-speedup.png]
        [--lengths 128,512,1024,4096] [--methods chunked:1,chunked:16,blocked:64,log:1] [--reference-max-t 1024]

Each result has cell, T, scan_ms, torch_ms and speedup_vs_torch = torch_ms / scan_ms (and
reference_ms, speedup_vs_reference, the memory figures and methods_ms). `--device cuda` without a
GPU prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit import Recurrent
from rnnkit.io import save_figure
from rnnkit.nn import scan
from throughput import machine_info  # the script beside this one

TORCH = {"mingru": nn.GRU, "minlstm": nn.LSTM}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_mib(run: Callable[[], torch.Tensor]) -> float:
    """MiB of the tensors autograd keeps for the backward pass of run()'s output (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run().sum().backward()
    return sum(storages.values()) / 2**20


def time_ms(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run().sum().backward()
    _sync(device)
    return 1000 * (time.perf_counter() - start)


def bench(cell: str, T: int, B: int, H: int, device: torch.device, rounds: int, methods: list[tuple[str, int]],
          reference: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device, requires_grad=True)
    layer = Recurrent(cell, H, H, backend="scan").to(device)
    step_loop = Recurrent(cell, H, H, backend="reference").to(device)
    step_loop.load_state_dict(layer.state_dict())
    baseline = TORCH[cell](H, H).to(device)

    def scanned(method: str, chunk: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            previous = scan.DEFAULTS[device.type]
            scan.DEFAULTS[device.type] = (method, chunk)
            try:
                return layer(x)[0]
            finally:
                scan.DEFAULTS[device.type] = previous
        return run

    runs: dict[str, Callable[[], torch.Tensor]] = {
        "scan": lambda: layer(x)[0], "torch": lambda: baseline(x)[0],
        **({"reference": lambda: step_loop(x)[0]} if reference else {}),
        **{f"{m}:{c}": scanned(m, c) for m, c in methods},
    }
    for run in runs.values():  # warm up
        time_ms(run, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            times[name].append(time_ms(runs[name], device))
    ms = {name: statistics.median(values) for name, values in times.items()}
    result: dict[str, Any] = {
        "cell": cell, "torch_module": TORCH[cell].__name__, "T": T, "B": B, "H": H, "E": H, "device": device.type,
        "method": "%s:%d" % scan.DEFAULTS[device.type], "rounds": rounds,
        "scan_ms": ms["scan"], "torch_ms": ms["torch"], "speedup_vs_torch": ms["torch"] / ms["scan"],
        "scan_saved_mib": saved_mib(runs["scan"]), "torch_saved_mib": saved_mib(runs["torch"]),
        "methods_ms": {f"{m}:{c}": ms[f"{m}:{c}"] for m, c in methods},
    }
    if reference:
        result |= {"reference_ms": ms["reference"], "speedup_vs_reference": ms["reference"] / ms["scan"],
                   "reference_saved_mib": saved_mib(runs["reference"])}
    if device.type == "cuda":
        for name in ("scan", "torch"):
            torch.cuda.reset_peak_memory_stats()
            time_ms(runs[name], device)
            result[f"{name}_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def plot(results: list[dict[str, Any]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for cell, color in (("mingru", "tab:olive"), ("minlstm", "tab:cyan")):
        rows = [r for r in results if r["cell"] == cell]
        if rows:
            ax.plot([r["T"] for r in rows], [r["speedup_vs_torch"] for r in rows], "o-", color=color,
                    label=f"{cell} scan / torch.nn.{rows[0]['torch_module']}")
            timed = [r for r in rows if "speedup_vs_reference" in r]
            if timed:
                ax.plot([r["T"] for r in timed], [r["speedup_vs_reference"] for r in timed], "o--", color=color,
                        alpha=0.6, label=f"{cell} scan / its step loop")
    ax.axhline(1, color="grey", lw=1)
    ax.set_xscale("log", base=2)
    first = results[0]
    ax.set(xlabel="sequence length T", ylabel="speed-up (forward + backward)",
           title=f"one layer, B = {first['B']}, E = H = {first['H']}, {first['device']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cells", default="mingru,minlstm")
    parser.add_argument("--lengths", default="128,512,1024,4096", help="comma-separated T")
    parser.add_argument("--methods", default="chunked:1,chunked:16,blocked:64,log:1", help="scan methods to time besides the default")
    parser.add_argument("--reference-max-t", type=int, default=1024, help="time the step loop up to this T")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="T 32 and 128, B 8, H 64, 2 rounds: seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    parser.add_argument("--plot", type=Path, help="write the speed-ups against T as a PNG")
    parser.add_argument("--replot", type=Path, help="only draw --plot from the JSON of an earlier run")
    args = parser.parse_args()
    if args.replot is not None and args.plot is not None:
        save_figure(args.plot, plot(json.loads(args.replot.read_text())["results"]), dpi=100)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        print("scan.py: skipped, --device cuda was asked for but no CUDA device is here")
        return
    if args.quick:
        args.lengths, args.batch, args.hidden, args.rounds = "32,128", 8, 64, 2
    device = torch.device(args.device)
    methods = [(m, int(c)) for m, c in (entry.split(":") for entry in args.methods.split(",") if entry)]
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    results = []
    for cell in args.cells.split(","):
        for T in (int(t) for t in args.lengths.split(",")):
            r = bench(cell, T, args.batch, args.hidden, device, args.rounds, methods, T <= args.reference_max_t)
            results.append(r)
            reference = f"  reference {r['reference_ms']:8.1f} ms" if "reference_ms" in r else ""
            others = "  ".join(f"{k} {v:.1f}" for k, v in r["methods_ms"].items())
            say(f"{cell:7} T={T:<5} scan {r['scan_ms']:8.1f} ms  torch.nn.{r['torch_module']} {r['torch_ms']:8.1f} ms"
                f"  x{r['speedup_vs_torch']:.2f}{reference}  saved MiB: scan {r['scan_saved_mib']:.0f}, "
                f"torch {r['torch_saved_mib']:.0f}  [{others}]")
    report = {
        "machine": machine_info(),
        "command": " ".join(sys.argv[1:]),
        "results": results,
    }
    if args.plot is not None:
        save_figure(args.plot, plot(results), dpi=100)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
