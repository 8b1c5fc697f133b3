"""Pruning plus layer merging on Fashion-MNIST: compress the trained baselines with the
`prune-merge` recipe, time the shipped model against the original, and print the table.

    python benchmarks/merge.py [--models lenet5 lenet5-caffe resnet20] [--recipe prune-merge|merge]
        [--out runs/bench-merge]
        [--finetune-epochs N] [--set STEP.KEY=VALUE ...]

Targets (issue 5): lenet5 ≥ 20× smaller and ≥ 8× higher throughput at ≤ 0.5 points drop (the
published LeNet-5 claim); resnet20 loses at least a quarter of its conv and linear layers at
≤ 1 point drop. Size is the bytes of model.cnz against the fp32 parameters; throughput is
batch 256, both models decoded from their files and timed alternately in this process (best
of five 2-second rounds). Every figure is measured in this run.
"""

from __future__ import annotations


from cnnzip.api import bench_files
from common import compress_each, recipe_parser, write_results

# Per-model settings, printed with each row: resnet20's residual blocks are what it can lose
# (its activations are functional calls, so they are not candidates), and it retrains for
# fewer epochs because each costs ~20× a LeNet's on two CPU cores.
OVERRIDES = {
    "resnet20": ["merge.target_layers=0.25", "merge.target_macs=null", "channels.epochs=2",
                 "merge.epochs=5", "prune.epochs=2", "share.epochs=1"],
}


def main() -> int:
    args = recipe_parser(__doc__, ["lenet5", "lenet5-caffe", "resnet20"], "prune-merge",
                         "runs/bench-merge").parse_args()
    rows = []
    for model, checkpoint, out, r, seconds, overrides in compress_each(
            args, OVERRIDES if args.recipe == "prune-merge" else None):
        speed = bench_files(checkpoint, out / "model.cnz", rounds=5, min_seconds=2.0)
        merge = r["notes"].get("merge", {})
        rows.append({"model": model, "recipe": args.recipe, "overrides": overrides,
                     "base_acc": r["baseline"]["accuracy"], "acc": r["compressed"]["accuracy"],
                     "drop": r["accuracy_drop"], "fp32_bytes": r["baseline"]["bytes_fp32"],
                     "cnz_bytes": r["compressed"]["container_bytes"],
                     "ratio": r["compression_ratio"],
                     "macs": [r["baseline"]["macs"], r["compressed"]["macs"]],
                     "layers": [merge.get("layers_before"), r["stages"][-1]["layers"]],
                     "removed": merge.get("chosen", []),
                     "base_images_per_s": speed["baseline_images_per_s"],
                     "images_per_s": speed["compressed_images_per_s"],
                     "speedup": speed["speedup"], "seconds": round(seconds)})
        row = rows[-1]
        print(f"{model:13s} acc {row['base_acc']:.4f} → {row['acc']:.4f} (drop "
              f"{row['drop']:.2f} pts)  {row['fp32_bytes']:,} B → {row['cnz_bytes']:,} B = "
              f"{row['ratio']:.1f}×  layers {row['layers'][0]} → {row['layers'][1]}  MACs "
              f"{row['macs'][0]:,} → {row['macs'][1]:,}  {row['base_images_per_s']:,.0f} → "
              f"{row['images_per_s']:,.0f} img/s = {row['speedup']:.2f}×  {row['seconds']} s"
              + (f"  [{' '.join(overrides)}]" if overrides else ""), flush=True)
        print(f"{'':13s} removed: {', '.join(row['removed']) or 'nothing'}", flush=True)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
