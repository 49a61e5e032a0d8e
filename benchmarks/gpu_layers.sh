#!/usr/bin/env bash
# One prepared device run (run from the repo root with $OUT set) for the layers: CUDA tests, then the layer benchmark on the GPU.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
python3 -m pytest -q -p no:cacheprovider tests/test_recurrent_cuda.py tests/test_recurrent.py tests/test_cells.py 2>&1 | tail -5
python3 benchmarks/layers.py --device cuda --json > "$OUT/layers_cuda.json" && cat "$OUT/layers_cuda.json" | python3 -c "
import json,sys; d=json.load(sys.stdin)
for r in d['results']: print(r['cell'], r['T'], r['B'], r['H'], 'torch %.2f fused %.2f ref %.1f ms  fused/torch %.3f' % (r['torch_ms'], r['fused_ms'], r['reference_ms'], r['fused_over_torch']))"
