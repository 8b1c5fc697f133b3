"""Searched pruning policies against fixed allocations, at the same MACs budget and the same
fine-tuning, over several seeds.

    python benchmarks/policy.py [--models resnet20 vgg16] [--speedups 2] [--seeds 0 1 2]
        [--methods uniform global sensitivity ddpg ddpg-scale] [--epochs 1]
        [--episodes 300] [--warmup 100] [--out runs/bench-policy]

Every run starts from the trained baseline in benchmarks/baselines/ and prunes channels (L2
criterion, at most 90% of any group) to 1/SPEEDUP of its MACs with one allocation, then
fine-tunes with distillation for --epochs; the seed drives the fine-tuning's order and the
agent. ``ddpg`` is AMC's agent over per-group ratios, ``ddpg-scale`` the seeds' global ratio
with per-group deviations (both rewarded by validation accuracy before fine-tuning, with the
BatchNorm statistics measured again); ``uniform`` cuts every group alike, ``global`` ranks
layer-normalised L2 norms across the model (the channel-prune recipe), ``sensitivity``
ranks each channel's measured validation cost. Test accuracy on the full Fashion-MNIST test
set; the table gives mean ± standard deviation over the seeds.

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
from cnnzip.methods.channel import Allocation, ChannelPrune, Criterion
from cnnzip.train import evaluate
from common import baselines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--speedups", nargs="+", type=float, default=[2.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+",
                        default=["uniform", "global", "sensitivity", "ddpg", "ddpg-scale"],
                        choices=[a.value for a in Allocation])
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs, every run")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000,
                        help="validation images per episode")
    parser.add_argument("--out", default="runs/bench-policy")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("fashion-mnist", seed=0)
    in_shape = tuple(splits.info.in_shape)
    rows = []
    for name, path in baselines(args.models):
        base = load_checkpoint(path).model.eval()
        base_acc = evaluate(base, splits.test, splits.info)
        base_macs = metrics.count_macs(base, in_shape)
        for speedup in args.speedups:
            for method in args.methods:
                for seed in args.seeds:
                    config = ChannelPrune(
                        criterion=Criterion.L2, allocation=Allocation(method),
                        target_macs=1 / speedup, epochs=args.epochs, lr=args.lr,
                        policy_episodes=args.episodes, policy_warmup=args.warmup,
                        policy_samples=args.samples)
                    start = time.perf_counter()
                    model = copy.deepcopy(base)
                    ctx = Context(splits, teacher=base, seed=seed, quiet=True)
                    apply(model, config, ctx)
                    model.eval()
                    acc = evaluate(model, splits.test, splits.info)
                    policy = ctx.notes["channels"].get("policy", {})
                    row = {"model": name, "speedup_target": speedup, "method": method,
                           "seed": seed, "epochs": args.epochs, "base_acc": base_acc,
                           "acc": acc, "drop_points": 100 * (base_acc - acc),
                           "macs_ratio": base_macs / metrics.count_macs(model, in_shape),
                           "search_best_val": policy.get("best_val_accuracy"),
                           "ratios": {r: g["ratio"] for r, g in
                                      ctx.notes["channels"]["groups"].items()},
                           "seconds": time.perf_counter() - start}
                    rows.append(row)
                    print(f"{name:9s} {speedup:g}× {method:12s} seed {seed} acc {base_acc:.4f} → "
                          f"{acc:.4f} (−{row['drop_points']:.2f}) MACs ÷{row['macs_ratio']:.2f}"
                          f" ({row['seconds']:.0f} s)", flush=True)
                    (out / "results.json").write_text(json.dumps(
                        {"runtime": runtime_name(), "args": vars(args), "rows": rows}, indent=2))
    print(f"\n| model | MACs target | method | test accuracy (mean ± std, {len(args.seeds)} "
          "seeds) | drop (pts) | MACs ÷ | seconds per run |\n|---|---|---|---|---|---|---|")
    keys = dict.fromkeys((r["model"], r["speedup_target"], r["method"]) for r in rows)
    for model, speedup, method in keys:
        same = [r for r in rows if (r["model"], r["speedup_target"], r["method"]) ==
                (model, speedup, method)]
        accs = [r["acc"] for r in same]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {model} | {speedup:g}× | {method} | {statistics.mean(accs):.4f} ± {std:.4f} | "
              f"{statistics.mean(r['drop_points'] for r in same):.2f} | "
              f"{statistics.mean(r['macs_ratio'] for r in same):.2f} | "
              f"{statistics.mean(r['seconds'] for r in same):.0f} |")
    print(f"\nresults in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
