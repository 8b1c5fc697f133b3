#!/usr/bin/env bash
# The main job on real data: train LeNet-5 on Fashion-MNIST, then evaluate and inspect the file.
# (Compression recipes extend this as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/main}
mkdir -p "$OUT"
.venv/bin/cnnzip train --model lenet5 --dataset fashion-mnist --epochs "${EPOCHS:-5}" --seed 0 \
  --out "$OUT/lenet5.safetensors"
.venv/bin/cnnzip eval "$OUT/lenet5.safetensors" --json
.venv/bin/cnnzip inspect "$OUT/lenet5.safetensors"
