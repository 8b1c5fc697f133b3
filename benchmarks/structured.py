"""Structured pruning on Fashion-MNIST: our channel pruning against Torch-Pruning's standard
recipe at the same MACs budget and the same fine-tuning, side by side.

    python benchmarks/structured.py [--models resnet20 vgg16 mobilenetv2] [--speedups 2 4]
        [--configs l2/global fpgm/adaptive ...] [--torch-pruning local global isomorphic]
        [--epochs 3] [--steps 1] [--seeds 0 1 2] [--rounds 5] [--fold]
        [--out runs/bench-structured]

Every row starts from the trained baseline in benchmarks/baselines/ and is measured in this run:
test accuracy on the full Fashion-MNIST test set after fine-tuning, MACs and parameters of the
pruned model, and throughput: the baseline and every method's pruned model at one budget and seed
timed alternately in this process once all are fine-tuned, so that they share the machine's load
(batch 256, best of five rounds of at least 2 s each; ``--fold`` times them again with their
BatchNorms folded, as they would ship). With several seeds, a table of each
method's mean drop and speed-up follows. results.json also holds each pruned model's
convolution widths.

Torch-Pruning with group L2 magnitude importance in each of its modes (``--torch-pruning``):
``local``, its default (every layer pruned by the same ratio), ``global`` (its benchmarks' "l2"
method: one ranking across the model) and ``isomorphic`` (global ranking within groups of the
same structure); channels removed in small steps until the MACs budget is met. Both sides keep
at least 10% of every layer's channels (max_ratio 0.9), never prune the output layer, and
fine-tune with the same distillation loss, epochs and learning rate (with ``--steps N``,
both prune gradually: N cuts, each to the same share of what is left, fine-tuned between).
Our configurations are CRITERION/ALLOCATION, with "+soft" for soft pruning (the fine-tuning
epochs are then spent with the chosen channels zeroed and free to recover), "+cost" or
"+cost:POWER" to rank channels by importance per MAC (cost_weight 1 or POWER), "+round:N" to
keep channel counts multiples of N (round_to), and "+KEY=VALUE" for any other option of the
``channels`` step (e.g. "fpgm/sensitivity+sensitivity_measure=kl").

Targets (issue 4): at 2× fewer MACs, ≤ 0.5 points accuracy drop on resnet20 and vgg16 and
measured throughput ≥ 1.6× the baseline's; our best configuration at least matches
Torch-Pruning's.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch_pruning as tp
import yaml

from cnnzip import metrics
from cnnzip.api import bench_models, folded_copy, runtime_name
from cnnzip.codec import load_checkpoint
from cnnzip.data import load_dataset
from cnnzip.errors import CnnzipError
from cnnzip.graph.groups import output_layer
from cnnzip.methods.base import Context, apply, finetune
from cnnzip.methods.channel import ChannelPrune, cut_epochs, cut_ratio
from cnnzip.recipes import parse_recipe
from cnnzip.train import evaluate
from common import baselines

MAX_RATIO = 0.9
TP_STEPS = 400


TP_MODES = {  # Torch-Pruning's settings: (global_pruning, isomorphic)
    "local": (False, False),  # its default: the same ratio in every layer
    "global": (True, False),  # one ranking of group L2 norms across the model
    "isomorphic": (True, True),  # global within groups of the same structure (its v1.5 option)
}


def torch_pruning(model: torch.nn.Module, in_shape: tuple[int, ...], target_macs: float,
                  mode: str = "global", max_ratio: float = MAX_RATIO) -> None:
    """Torch-Pruning's L2 group-magnitude pruning in ``mode`` (TP_MODES), stepped until
    MACs ≤ target × the model's."""
    head = dict(model.named_modules())[output_layer(model)]
    global_pruning, isomorphic = TP_MODES[mode]
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, *in_shape),
                                  importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=global_pruning, isomorphic=isomorphic,
                                  pruning_ratio=1.0, max_pruning_ratio=max_ratio,
                                  iterative_steps=TP_STEPS, ignored_layers=[head])
    budget = target_macs * metrics.count_macs(model, in_shape)
    while metrics.count_macs(model, in_shape) > budget:
        if pruner.current_step >= TP_STEPS:
            raise RuntimeError(f"Torch-Pruning cannot reach {target_macs:g} of the MACs")
        pruner.step()


def ours(spec: str, target_macs: float, epochs: int, lr: float, steps: int = 1) -> ChannelPrune:
    """CRITERION/ALLOCATION[+soft][+cost[:POWER]][+round:N][+KEY=VALUE...] as a ChannelPrune
    config (KEY any option of the ``channels`` step, VALUE read as YAML)."""
    name, *flags = spec.split("+")
    criterion, _, allocation = name.partition("/")
    options = {"criterion": criterion, "allocation": allocation, "target_macs": target_macs,
               "max_ratio": MAX_RATIO, "epochs": epochs, "lr": lr, "steps": steps}
    for flag in flags:
        key, eq, value = flag.partition("=")
        if eq:
            options[key] = yaml.safe_load(value)
        elif flag.startswith("cost"):
            options["cost_weight"] = float(flag.partition(":")[2] or 1.0)
        elif flag.startswith("round:"):
            options["round_to"] = int(flag.partition(":")[2])
        elif flag == "soft":
            options["soft"] = True
        else:
            raise SystemExit(f"{spec}: unknown flag {flag!r} (soft, cost, cost:POWER, round:N, "
                             f"KEY=VALUE)")
    try:
        return parse_recipe({"name": spec, "steps": [{"channels": options}]}, spec).steps[0][1]
    except CnnzipError as exc:
        raise SystemExit(str(exc)) from None


def run_group(name: str, base: torch.nn.Module, splits, speedup: float, methods: list[str],
              seed: int, args: argparse.Namespace) -> list[dict]:
    """Every method on one model at one budget and seed; the pruned models are timed together
    at the end, alternately with the baseline, so their speed-ups share the machine's load."""
    in_shape = tuple(splits.info.in_shape)
    base_acc = evaluate(base, splits.test, splits.info)
    base_macs, base_params = metrics.count_macs(base, in_shape), metrics.count_params(base)
    rows, pruned = [], {}
    for method in methods:
        start = time.perf_counter()
        model = copy.deepcopy(base)
        ctx = Context(splits, teacher=base, seed=seed, quiet=True)
        if method.startswith("torch-pruning/"):
            # with --steps, pruned and fine-tuned in turn as its README's iterative loop, each
            # cut to the same share of what is left as ours, the same epochs after each
            n = args.steps
            for k, epochs in enumerate(cut_epochs(args.epochs, n)):
                now = metrics.count_macs(model, in_shape)
                torch_pruning(model, in_shape, base_macs * speedup ** (-(k + 1) / n) / now,
                              method.partition("/")[2], cut_ratio(MAX_RATIO, n))
                finetune(model, ctx, epochs=epochs, lr=args.lr, description="retrain")
        else:
            apply(model, ours(method, 1 / speedup, args.epochs, args.lr, args.steps), ctx)
        pruned[method] = model.eval()
        acc = evaluate(model, splits.test, splits.info)
        row = {"model": name, "speedup_target": speedup, "method": method, "seed": seed,
               "epochs": args.epochs, "base_acc": base_acc, "acc": acc,
               "drop_points": 100 * (base_acc - acc),
               "macs": metrics.count_macs(model, in_shape), "base_macs": base_macs,
               "params": metrics.count_params(model), "base_params": base_params,
               "widths": [m.out_channels for m in model.modules()
                          if isinstance(m, torch.nn.Conv2d)],
               "seconds": time.perf_counter() - start}
        row["macs_ratio"] = base_macs / row["macs"]
        rows.append(row)
    models = {"": base, **pruned}
    speed = bench_models(models, in_shape, rounds=args.rounds, min_seconds=2.0)
    folded = bench_models({k: folded_copy(m)[0] or m for k, m in models.items()}, in_shape,
                          rounds=args.rounds, min_seconds=2.0) if args.fold else {}
    for row in rows:
        row["base_images_per_s"], row["images_per_s"] = speed[""], speed[row["method"]]
        row["measured_speedup"] = row["images_per_s"] / row["base_images_per_s"]
        also = ""
        if folded:
            row["measured_speedup_folded"] = folded[row["method"]] / folded[""]
            also = f", ×{row['measured_speedup_folded']:.2f} folded"
        print(f"{name:12s} {speedup:g}× {row['method']:22s} seed {seed} "
              f"acc {base_acc:.4f} → {row['acc']:.4f} ({-row['drop_points']:+.2f}) "
              f"MACs ÷{row['macs_ratio']:.2f} params ÷{base_params / row['params']:.2f} "
              f"speed ×{row['measured_speedup']:.2f}{also} ({row['seconds']:.0f} s)", flush=True)
    return rows


def print_means(rows: list[dict]) -> None:
    """Each method's mean drop and speed-up over the seeds, with their spread."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["speedup_target"], r["method"]), []).append(r)
    print("\n| model | MACs target | method | seeds | drop (pts), mean ± sd | each seed "
          "| measured speed-up, mean ± sd |\n|---|---|---|---|---|---|---|")
    for (model, speedup, method), group in cells.items():
        drops = [r["drop_points"] for r in group]
        speeds = [r["measured_speedup"] for r in group]
        folded = [r["measured_speedup_folded"] for r in group if "measured_speedup_folded" in r]
        also = f" ({statistics.mean(folded):.2f}× folded)" if folded else ""
        print(f"| {model} | {speedup:g}× | {method} | {len(group)} | "
              f"{statistics.mean(drops):.2f} ± {_sd(drops):.2f} | "
              f"{', '.join(f'{d:.2f}' for d in drops)} | "
              f"{statistics.mean(speeds):.2f}× ± {_sd(speeds):.2f}{also} |")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16", "mobilenetv2"])
    parser.add_argument("--speedups", nargs="+", type=float, default=[2.0, 4.0],
                        help="MACs reduction factors (2: keep half the MACs)")
    parser.add_argument("--configs", nargs="*", default=["l2/global"],
                        help="our CRITERION/ALLOCATION[+soft][+cost[:P]][+round:N] "
                             "settings, each run beside Torch-Pruning's")
    parser.add_argument("--torch-pruning", nargs="*", default=list(TP_MODES),
                        choices=list(TP_MODES), help="Torch-Pruning's modes to run beside ours "
                        "(local is its default; none: only ours)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, both sides")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="fine-tuning (and validation split) seeds; with several, a table "
                             "of each method's mean and spread follows")
    parser.add_argument("--steps", type=int, default=1,
                        help="gradual pruning, both sides: the budget reached in this many "
                             "cuts, the fine-tuning epochs spread between them")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timing rounds (each model's best is kept)")
    parser.add_argument("--fold", action="store_true",
                        help="also time every model with its BatchNorms folded, as it ships")
    parser.add_argument("--out", default="runs/bench-structured")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [f"torch-pruning/{m}" for m in args.torch_pruning] + list(args.configs)
    rows = []
    for name, path in baselines(args.models):
        base = load_checkpoint(path).model.eval()
        for seed in args.seeds:
            splits = load_dataset("fashion-mnist", seed=seed)
            for speedup in args.speedups:
                rows += run_group(name, base, splits, speedup, methods, seed, args)
                (out / "results.json").write_text(json.dumps(
                    {"runtime": runtime_name(), "batch_size": 256, "rows": rows}, indent=2))
    print("\n| model | MACs target | method | seed | accuracy | drop (pts) | MACs ÷ | params ÷ "
          "| measured speed-up |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['speedup_target']:g}× | {r['method']} | {r['seed']} | "
              f"{r['base_acc']:.4f} → {r['acc']:.4f} | {r['drop_points']:.2f} | "
              f"{r['macs_ratio']:.2f} | {r['base_params'] / r['params']:.2f} | "
              f"{r['measured_speedup']:.2f}×"
              + (f" ({r['measured_speedup_folded']:.2f}× folded)" if args.fold else "") + " |")
    if len(args.seeds) > 1:
        print_means(rows)
    print(f"\nruntime: {runtime_name()}, batch 256; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
