#!/usr/bin/env bash
# The GPU path on a machine with one NVIDIA GPU whose Python already holds a CUDA build of torch
# and which reaches no package index (about 3-5 minutes; budget 8):
#   1. the tests marked `gpu` (tests/gpu: bf16 autocast, TF32, fused AdamW, pinned memory with
#      non-blocking copies, torch.compile, NCCL through torchrun with one process);
#   2. the training benchmark (benchmarks/gpu_bench.py): samples/s and MFU against the device's
#      bf16 peak, default dataset and model;
# and writes every figure to one JSON file, $OUT/gpu.json (OUT defaults to reports/gpu).
#
# What the project needs beyond torch, numpy, pandas, pyarrow, pyyaml and pytest travels as wheels
# in .whl/ (`make gpu-wheels` downloads them here: pydantic and its three dependencies, ~2.5 MiB),
# installed with --no-index into /tmp/site. The project itself runs from src/ (PYTHONPATH), so
# nothing else is installed. Usage, from the repo's root:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-reports/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

started=$(date +%s)
status=0
"$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -o addopts="" --junitxml "$OUT/gpu-tests.xml" \
  2>&1 | tee "$OUT/gpu-tests.txt" || status=$?
echo "gpu tests: exit $status, $(( $(date +%s) - started )) s"
"$PY" benchmarks/gpu_bench.py --out "$OUT/gpu.json" --junit "$OUT/gpu-tests.xml"
echo "gpu_check: $(( $(date +%s) - started )) s in all; figures in $OUT/gpu.json"
exit "$status"
