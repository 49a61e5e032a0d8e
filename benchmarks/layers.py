"""Forward + backward time of Recurrent(backend="fused") against torch.nn and backend="reference".

The three run interleaved, round after round, on the same input, so that a noisy shared machine
slows them alike; the median per implementation is reported, with the ratio fused / torch.nn.

    python benchmarks/layers.py [--quick] [--repeats N] [--device cpu|cuda|all] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rnnkit import Recurrent

SHAPES = [(35, 20, 650), (256, 64, 512)]  # (T, B, E = H)
QUICK_SHAPES = [(8, 4, 32)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step(module: torch.nn.Module, x: torch.Tensor) -> None:
    out, _ = module(x)
    out.sum().backward()


def bench_case(cell: str, T: int, B: int, H: int, device: str, repeats: int, with_reference: bool) -> dict:
    torch.manual_seed(0)
    fused = Recurrent(cell, H, H, backend="fused").to(device)
    reference = Recurrent(cell, H, H, backend="reference").to(device)
    reference.load_state_dict(fused.state_dict())
    plain = fused.to_torch()
    x = torch.randn(T, B, H, device=device)
    contenders = {"torch": plain, "fused": fused}
    if with_reference:
        contenders["reference"] = reference
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, module in contenders.items():  # warm-up: kernels, allocator, cuDNN plans
        _step(module, x)
    for _ in range(repeats):
        for name, module in contenders.items():
            module.zero_grad(set_to_none=True)
            _sync(device)
            start = time.perf_counter()
            _step(module, x)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    result = {"cell": cell, "T": T, "B": B, "E": H, "H": H, "device": device, "repeats": repeats}
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
        for T, B, H in QUICK_SHAPES if args.quick else SHAPES:
            for cell in args.cells.split(","):
                results.append(bench_case(cell, T, B, H, device, repeats, not args.no_reference))
                if not args.json:
                    r = results[-1]
                    ref = f"{r['reference_ms']:10.1f}" if "reference_ms" in r else "         -"
                    print(
                        f"{device:4} {cell:5} T={T:<4} B={B:<3} H={H:<4} torch {r['torch_ms']:9.1f} ms"
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
