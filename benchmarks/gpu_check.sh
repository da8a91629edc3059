#!/usr/bin/env bash
# The offline GPU check (issue 39) on a lent GPU machine: nothing is installed or fetched; the
# project's source runs from the working tree against the machine's own torch and transformers.
#
#   bash benchmarks/gpu_check.sh --commit $(git rev-parse --short HEAD) [more gpu_check.py flags]
#   (reports in $OUT, else benchmarks/results/gpu-check; the machine's copy has no .git, so the
#   commit is given)
set -euo pipefail
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec python3 benchmarks/gpu_check.py --out "$OUT" "$@"
