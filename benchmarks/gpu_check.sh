#!/usr/bin/env bash
# The offline GPU check (issue 39) on a lent GPU machine: nothing is installed or fetched; the
# project's source runs from the working tree against the machine's own torch and transformers.
#
#   bash benchmarks/gpu_check.sh [extra gpu_check.py flags]      (reports in $OUT, else
#                                                                 benchmarks/results/gpu-check)
set -euo pipefail
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec python3 benchmarks/gpu_check.py --out "$OUT" "$@"
