"""How much faster can a LeNet-5 get on this runtime? Speed only: LeNet-5 with fewer channels
(removed by the structured-pruning surgery), with and without its max poolings merged exactly
into the convolutions, timed against the full LeNet-5.

    python benchmarks/merge_floor.py [--widths 6-16 4-12 4-8 3-6 2-4 1-1] [--rounds 3]
        [--out runs/bench-merge-floor]

Issue 5's LeNet-5 target asks for ≥ 8× the throughput at ≤ 0.5 points. No training here:
throughput does not depend on the weights' values, so each row is an upper bound on the speed
of any network of that shape (the accuracy such a shape keeps is measured by merge.py and
structured.py). Batch 256, PyTorch CPU, every model timed alternately in this process (best of
``--rounds`` rounds); the baseline is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import write_results

from cnnzip.metrics import bench_models, count_macs, runtime_name
from cnnzip.models.channels import prune_channels, trace
from cnnzip.models.lenet import LeNet5
from cnnzip.surgery.merge import max_pools, merge_max_pool

IN_SHAPE = (1, 28, 28)


def narrowed(c1: int, c2: int) -> torch.nn.Module:
    """LeNet-5 with ``c1`` and ``c2`` channels in its convolutions (fully connected layers as
    they are, but for the inputs the second convolution's removed channels fed)."""
    model = LeNet5(IN_SHAPE).eval()
    plan = [(layer, False, tuple(range(keep, full)))
            for layer, keep, full in (("features.0", c1, 6), ("features.3", c2, 16))
            if keep < full]
    if plan:
        prune_channels(model, trace(model, IN_SHAPE), plan)
    return model


def pools_merged(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for pool in max_pools(model, IN_SHAPE):
        merge_max_pool(model, pool, IN_SHAPE)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=["6-16", "4-12", "4-8", "3-6", "2-4", "1-1"],
                        metavar="C1-C2", help="channels of the two convolutions (full: 6-16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-merge-floor")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = narrowed(6, 16)
    print(f"lenet5, batch 256, {runtime_name()}", flush=True)
    rows = []
    for width in args.widths:
        c1, c2 = (int(c) for c in width.split("-"))
        plain = narrowed(c1, c2)
        models = {"baseline": base, "plain": plain, "merged": pools_merged(plain)}
        speed = bench_models(models, IN_SHAPE, rounds=args.rounds)
        row = {"width": width, "macs": count_macs(plain, IN_SHAPE),
               "baseline_images_per_s": speed["baseline"],
               "plain_speedup": speed["plain"] / speed["baseline"],
               "merged_speedup": speed["merged"] / speed["baseline"],
               "merged_images_per_s": speed["merged"]}
        rows.append(row)
        print(f"conv {width:5s}  MACs {row['macs']:>7,}  baseline {speed['baseline']:>7,.0f} "
              f"img/s  narrowed {row['plain_speedup']:.2f}×  pools merged "
              f"{row['merged_speedup']:.2f}× ({speed['merged']:,.0f} img/s)", flush=True)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
