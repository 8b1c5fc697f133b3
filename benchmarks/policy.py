"""Searched pruning policies against fixed allocations, at the same MACs budget and the same
fine-tuning, over several seeds.

    python benchmarks/policy.py [--models resnet20 vgg16] [--speedups 2] [--seeds 0 1 2]
        [--methods uniform global sensitivity ddpg ddpg-scale] [--epochs 1]
        [--episodes 300] [--warmup 100] [--out runs/bench-policy]
    python benchmarks/policy.py --bits 4 [--methods uniform greedy ddpg ddpg-scale] ...

Every run starts from the trained baseline in benchmarks/baselines/ and prunes channels (L2
criterion, at most 90% of any group) to 1/SPEEDUP of its MACs with one allocation, then
fine-tunes with distillation for --epochs; the seed drives the fine-tuning's order and the
agent. ``ddpg`` is AMC's agent over per-group ratios, ``ddpg-scale`` the seeds' global ratio
with per-group deviations (both rewarded by validation accuracy before fine-tuning, with the
BatchNorm statistics measured again); ``uniform`` cuts every group alike, ``global`` ranks
layer-normalised L2 norms across the model (the channel-prune recipe), ``sensitivity``
ranks each channel's measured validation cost. Test accuracy on the full Fashion-MNIST test
set; the table gives mean ± standard deviation over the seeds.

With ``--bits B`` the runs are mixed precision instead: weights from 7 bits down through 6, 5,
4, 3, 2 to an average of at most B bits over all weights (feature maps 8-bit, BatchNorms
folded), chosen by ``greedy`` (the mixed recipe's: the least validation accuracy lost per bit
saved first), ``ddpg`` or ``ddpg-scale``; ``uniform`` is every layer at B bits. Then
--epochs of quantization-aware training with distillation (0: post-training).

Target (issue 21): at 2× fewer MACs the best searched policy ≥ 0.3 points above uniform and
not below sensitivity (mean of 3 seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

from cnnzip import metrics
from cnnzip.api import runtime_name
from cnnzip.codec import load_checkpoint
from cnnzip.data import load_dataset
from cnnzip.methods.base import Context, apply
from cnnzip.methods.channel import Allocation, ChannelPolicy, ChannelPrune, Criterion
from cnnzip.methods.quant import POLICIES, BitsPolicy, Quantize
from cnnzip.train import evaluate
from common import baselines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--speedups", nargs="+", type=float, default=[2.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+",
                        default=None, help="allocations (channels: "
                        f"{', '.join(a.value for a in Allocation)}) or policies (--bits: "
                        f"uniform, {', '.join(POLICIES)})")
    parser.add_argument("--bits", type=float, help="mixed precision to this average instead")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs, every run")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000,
                        help="validation images per episode")
    parser.add_argument("--finetune-images", type=int, default=0,
                        help="searched allocations: a short fine-tune on this many training "
                             "images before each episode's score")
    parser.add_argument("--out", default="runs/bench-policy")
    args = parser.parse_args()
    if args.methods is None:
        args.methods = (["uniform", "greedy", "ddpg", "ddpg-scale"] if args.bits else
                        ["uniform", "global", "sensitivity", "ddpg", "ddpg-scale"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("fashion-mnist", seed=0)
    in_shape = tuple(splits.info.in_shape)
    rows = []
    for name, path in baselines(args.models):
        base = load_checkpoint(path).model.eval()
        base_acc = evaluate(base, splits.test, splits.info)
        base_macs = metrics.count_macs(base, in_shape)
        for speedup in [args.bits] if args.bits else args.speedups:
            for method in args.methods:
                for seed in args.seeds:
                    config = _config(args, method, speedup)
                    start = time.perf_counter()
                    model = copy.deepcopy(base)
                    ctx = Context(splits, teacher=base, seed=seed, quiet=True)
                    apply(model, config, ctx)
                    model.eval()
                    acc = evaluate(model, splits.test, splits.info)
                    step = ctx.notes["quantize" if args.bits else "channels"]
                    policy = step.get("policy") or step.get("mixed") or {}
                    row = {"model": name, "speedup_target": speedup, "method": method,
                           "seed": seed, "epochs": args.epochs, "base_acc": base_acc,
                           "acc": acc, "drop_points": 100 * (base_acc - acc),
                           "macs_ratio": base_macs / metrics.count_macs(model, in_shape),
                           "search_best_val": policy.get("best_val_accuracy"),
                           "choice": step["bits"] if args.bits else
                           {r: g["ratio"] for r, g in step["groups"].items()},
                           "average_bits": step.get("average_bits"),
                           "seconds": time.perf_counter() - start}
                    if policy.get("finetune_images"):
                        row["method"] = f"{method}+ft{policy['finetune_images']}"
                    rows.append(row)
                    budget = f"{speedup:g} bits" if args.bits else f"{speedup:g}×"
                    print(f"{name:9s} {budget} {row['method']:12s} seed {seed} acc {base_acc:.4f} → "
                          f"{acc:.4f} ({-row['drop_points']:+.2f}) MACs ÷{row['macs_ratio']:.2f}"
                          f" ({row['seconds']:.0f} s)", flush=True)
                    (out / "results.json").write_text(json.dumps(
                        {"runtime": runtime_name(), "args": vars(args), "rows": rows}, indent=2))
    print(f"\n| model | {'average bits' if args.bits else 'MACs target'} | method | test accuracy (mean ± std, {len(args.seeds)} "
          "seeds) | drop (pts) | MACs ÷ | seconds per run |\n|---|---|---|---|---|---|---|")
    keys = dict.fromkeys((r["model"], r["speedup_target"], r["method"]) for r in rows)
    for model, speedup, method in keys:
        same = [r for r in rows if (r["model"], r["speedup_target"], r["method"]) ==
                (model, speedup, method)]
        accs = [r["acc"] for r in same]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {model} | {speedup:g}{'' if args.bits else '×'} | {method} | {statistics.mean(accs):.4f} ± {std:.4f} | "
              f"{statistics.mean(r['drop_points'] for r in same):.2f} | "
              f"{statistics.mean(r['macs_ratio'] for r in same):.2f} | "
              f"{statistics.mean(r['seconds'] for r in same):.0f} |")
    print(f"\nresults in {out / 'results.json'}")
    return 0


def _config(args: argparse.Namespace, method: str, budget: float) -> ChannelPrune | Quantize:
    if not args.bits:
        return ChannelPrune(criterion=Criterion.L2, allocation=Allocation(method),
                            target_macs=1 / budget, epochs=args.epochs, lr=args.lr,
                            policy=ChannelPolicy(episodes=args.episodes, warmup=args.warmup,
                                                 samples=args.samples,
                                                 finetune_images=args.finetune_images))
    if method == "uniform":
        return Quantize(weight_bits=int(budget), act_bits=8, samples=args.samples,
                        epochs=args.epochs, weights_first=True)
    return Quantize(weight_bits=7, act_bits=8, budget_bits=budget,
                    candidate_bits=[7, 6, 5, 4, 3, 2], samples=args.samples,
                    policy=BitsPolicy(method=method, episodes=args.episodes, warmup=args.warmup),
                    epochs=args.epochs, weights_first=True)


if __name__ == "__main__":
    raise SystemExit(main())
