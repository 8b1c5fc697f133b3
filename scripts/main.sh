#!/usr/bin/env bash
# The main job on real data: compress the trained LeNet-300-100 baseline (Fashion-MNIST) with the
# Deep Compression recipe, then evaluate the container on the full test set, time it against
# the original and print its per-layer table. Pass another baseline or recipe as arguments:
#   bash scripts/main.sh [benchmarks/baselines/MODEL-fashion-mnist.safetensors] [RECIPE]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-benchmarks/baselines/lenet300-fashion-mnist.safetensors}
RECIPE=${2:-deep-compression}
OUT=${OUT:-runs/main}
.venv/bin/cnnzip compress "$MODEL" --recipe "$RECIPE" --seed 0 --out "$OUT"
.venv/bin/cnnzip eval "$OUT/model.cnz" --json
.venv/bin/cnnzip bench "$MODEL" "$OUT/model.cnz"
.venv/bin/cnnzip inspect "$OUT/model.cnz"
echo "report: $OUT/report.md"
