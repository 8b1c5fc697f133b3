"""Training defaults that do not diverge: each zoo model trained at `cnnzip train`'s defaults on
small training sets, where a high peak rate goes wrong first.

Sets: Fashion-MNIST cut to its first 10,000 training images (5,000 of them held out for
validation, as `train` does; the size at which lenet5-caffe diverged on MNIST) and 10,000
CIFAR-10-shaped synthetic images (3 × 32 × 32). Prints each model's validation accuracy per
epoch and its test accuracy, or the divergence; `--clip-norm 0` shows the same without gradient
clipping.

    python benchmarks/train_stability.py [--models lenet5-caffe,resnet20] [--epochs 15]
        [--lr 0.05] [--clip-norm 2.0]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnzip.data import load_dataset, synthetic_splits
from cnnzip.data.datasets import SYNTHETIC_RGB
from cnnzip.errors import CnnzipError
from cnnzip.models import ZOO
from cnnzip.models.zoo import build_network
from cnnzip.train import TrainConfig, evaluate, fit

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _subset(directory: Path, images: int) -> Path:
    """Fashion-MNIST with only its first ``images`` training images, as IDX files."""
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((FASHION / f"{name}.gz").read_bytes())
        if name.startswith("train"):
            dims = np.frombuffer(raw[4:4 + 4 * raw[3]], ">u4").copy()
            row = int(np.prod(dims[1:]))
            dims[0] = images
            raw = raw[:4] + dims.astype(">u4").tobytes() + \
                raw[4 + 4 * raw[3]:4 + 4 * raw[3] + images * row]
        (directory / name).write_bytes(raw)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5,lenet5-caffe,resnet20,mobilenetv2")
    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--clip-norm", type=float, default=defaults.clip_norm)
    parser.add_argument("--sets", default="fashion-mnist-10k,synthetic-rgb-10k")
    args = parser.parse_args()
    config = replace(defaults, epochs=args.epochs, lr=args.lr, clip_norm=args.clip_norm)
    print(f"epochs {config.epochs}, lr {config.lr}, clip_norm {config.clip_norm}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"fashion-mnist-10k": lambda: load_dataset(
                    "fashion-mnist", _subset(Path(tmp), 10_000)),
                "synthetic-rgb-10k": lambda: synthetic_splits(5_000, 5_000, 2_000,
                                                              info=SYNTHETIC_RGB)}
        for set_name in args.sets.split(","):
            splits = sets[set_name]()
            for model in args.models.split(","):
                torch.manual_seed(config.seed)
                net = build_network(model, splits.info.in_shape, splits.info.num_classes,
                                    ZOO[model].default_width)
                start = time.perf_counter()
                try:
                    result = fit(net, splits, config, quiet=True, description=model)
                except CnnzipError as exc:
                    print(f"{set_name} {model}: {exc}", flush=True)
                    continue
                history = " ".join(f"{v:.3f}" for v in result.val_accuracy)
                print(f"{set_name} {model}: test {evaluate(net, splits.test, splits.info):.4f} "
                      f"in {time.perf_counter() - start:.0f} s; val by epoch {history}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
