#!/usr/bin/env bash
# Trains the baseline checkpoints the benchmarks start from. Each line is the exact command that
# made the file beside this script; its JSON summary (accuracy, seconds) is written next to it.
# Run from the repository root with the virtual environment active:  bash benchmarks/baselines/train.sh [MODEL ...]
set -euo pipefail
cd "$(dirname "$0")"
declare -A ARGS=(
  [lenet300]="--epochs 20 --augment-pad 1"
  [lenet5]="--epochs 20"
  [lenet5-caffe]="--epochs 20"
  [resnet20]="--epochs 15"
  [vgg16]="--epochs 8"
  [alexnet]="--epochs 10"
  [resnet56]="--epochs 10"
  [mobilenetv2]="--epochs 8"
)
ORDER=(lenet300 lenet5 lenet5-caffe resnet20 vgg16 alexnet resnet56 mobilenetv2)
models=("${@:-${ORDER[@]}}")
for m in "${models[@]}"; do
  # shellcheck disable=SC2086
  cnnzip train --model "$m" --dataset fashion-mnist ${ARGS[$m]} --seed 0 --quiet --json \
    --out "$m-fashion-mnist.safetensors" > "$m-fashion-mnist.json"
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['model'], d['test_accuracy'], d['train_seconds'], 's')" "$m-fashion-mnist.json"
done
