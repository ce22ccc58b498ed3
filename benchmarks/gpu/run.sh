#!/usr/bin/env bash
# One prepared GPU session (H200), under 8 minutes: GPU tests, then the GPU measurements.
# Usage, from the repository root on the GPU machine:  bash benchmarks/gpu/run.sh
# Needs python3 with torch (CUDA build) importable. pycuda: installed from a carried
# sdist or wheel in benchmarks/gpu/wheels/ when present (the machine has no internet);
# without it the kernel parts skip with the reason. TensorRT is not installed there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "torch with CUDA is not importable here: nothing to run" | tee "$OUT/gpu_run.txt"
    exit 1
fi
"$PY" -m pip install -q --no-deps -e . >/dev/null 2>&1 || echo "warning: editable install failed; running from the tree"
if ! "$PY" -c 'import pycuda' 2>/dev/null; then
    if ls benchmarks/gpu/wheels/pycuda-* >/dev/null 2>&1; then
        timeout 240 "$PY" -m pip install -q --no-index --find-links benchmarks/gpu/wheels pycuda \
            || echo "pycuda build failed: kernel checks will skip"
    else
        echo "no pycuda wheel or sdist in benchmarks/gpu/wheels: kernel checks will skip"
    fi
fi
echo "TensorRT is not installed on this machine: TensorRT tests skip and no TensorRT figure is claimed."
timeout 180 "$PY" -m pytest -q -m gpu tests/unit -rs 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 240 "$PY" -m benchmarks.gpu.gpu_checks 2>&1 | tee "$OUT/gpu_checks.txt"
