"""Forward + backward time of Recurrent(backend="fused") against torch.nn and backend="reference".

The three run interleaved, round after round, on the same input, so that a noisy shared machine
slows them alike; the median per implementation is reported, with the ratio fused / torch.nn.
With --lengths, the batch is of uneven lengths, torch.nn reads it packed, and the layers are the
speech model's: 3 bidirectional layers of 160 over 320 inputs, T 150, B 32.

    python benchmarks/layers.py [--quick] [--lengths] [--repeats N] [--device cpu|cuda|all] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit import Recurrent

SHAPES = [(35, 20, 650), (256, 64, 512)]  # (T, B, E = H)
QUICK_SHAPES = [(8, 4, 32)]
LENGTHS_CASE = dict(T=150, B=32, E=320, H=160, layers=3)  # the speech model's recurrent layers
QUICK_LENGTHS_CASE = dict(T=8, B=4, E=6, H=5, layers=2)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step(module: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
    if lengths is None:
        out, _ = module(x)
    elif isinstance(module, Recurrent):
        out, _ = module(x, None, lengths)
    else:
        out = module(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data
    out.sum().backward()


def bench_case(cell: str, T: int, B: int, H: int, device: str, repeats: int, with_reference: bool,
               E: int | None = None, layers: int = 1, with_lengths: bool = False) -> dict:
    torch.manual_seed(0)
    E = H if E is None else E
    shape = dict(num_layers=layers, bidirectional=with_lengths)
    fused = Recurrent(cell, E, H, backend="fused", **shape).to(device)
    reference = Recurrent(cell, E, H, backend="reference", **shape).to(device)
    reference.load_state_dict(fused.state_dict())
    plain = fused.to_torch()
    x = torch.randn(T, B, E, device=device)
    # one sequence of T, the others up to 10% shorter, as a batch of utterances of similar length
    lengths = torch.cat([torch.tensor([T]), torch.randint(T - T // 10, T + 1, (B - 1,))]) if with_lengths else None
    contenders = {"torch": plain, "fused": fused}
    if with_reference:
        contenders["reference"] = reference
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, module in contenders.items():  # warm-up: kernels, allocator, cuDNN plans
        _step(module, x, lengths)
    for _ in range(repeats):
        for name, module in contenders.items():
            module.zero_grad(set_to_none=True)
            _sync(device)
            start = time.perf_counter()
            _step(module, x, lengths)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    result = {"cell": cell, "T": T, "B": B, "E": E, "H": H, "layers": layers, "bidirectional": with_lengths,
              "uneven_lengths": with_lengths, "device": device, "repeats": repeats}
    for name, values in times.items():
        result[f"{name}_ms"] = 1000 * statistics.median(values)
    result["fused_over_torch"] = result["fused_ms"] / result["torch_ms"]
    if with_reference:
        result["reference_over_torch"] = result["reference_ms"] / result["torch_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (for CI)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 10, 3 with --quick)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--cells", default="elman,lstm,gru")
    parser.add_argument("--lengths", action="store_true",
                        help="a batch of uneven lengths through 3 bidirectional layers (torch.nn reads it packed)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference loop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.exit(1, "layers.py: no CUDA device here; run with --device cpu\n")
        if not args.json:
            print("layers.py: no CUDA device here, timing the CPU only")
        devices.remove("cuda")
    repeats = args.repeats or (3 if args.quick else 10)
    results = []
    for device in devices:
        if args.lengths:
            case = QUICK_LENGTHS_CASE if args.quick else LENGTHS_CASE
            cases = [dict(case, with_lengths=True)]
        else:
            cases = [dict(T=T, B=B, H=H) for T, B, H in (QUICK_SHAPES if args.quick else SHAPES)]
        for case in cases:
            for cell in args.cells.split(","):
                results.append(bench_case(cell, device=device, repeats=repeats, with_reference=not args.no_reference,
                                          **case))
                if not args.json:
                    r = results[-1]
                    ref = f"{r['reference_ms']:10.1f}" if "reference_ms" in r else "         -"
                    shape = f"L={r['layers']} bidirectional, uneven lengths " if args.lengths else ""
                    print(
                        f"{device:4} {cell:5} {shape}T={r['T']:<4} B={r['B']:<3} H={r['H']:<4} torch {r['torch_ms']:9.1f} ms"
                        f"  fused {r['fused_ms']:9.1f} ms  reference {ref} ms  fused/torch {r['fused_over_torch']:.3f}",
                        flush=True,
                    )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
