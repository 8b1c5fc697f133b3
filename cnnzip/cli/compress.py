"""``cnnzip compress``: apply a recipe and write model.cnz, report.json and report.md."""

from __future__ import annotations

import argparse
import sys

from cnnzip.cli.common import add_data_args, print_json
from cnnzip.pipeline import compress
from cnnzip.recipes import builtin_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a trained model with a recipe",
                       description="Compress a trained checkpoint: the recipe's steps (sensitivity "
                                   "scan, pruning, weight sharing, with distillation from the "
                                   "original while retraining), then the entropy-coded .cnz "
                                   "container. Writes OUT/model.cnz, OUT/report.json, "
                                   "OUT/report.md and plots.")
    p.add_argument("file", metavar="FILE.safetensors", help="a checkpoint from `cnnzip train`")
    p.add_argument("--recipe", required=True,
                   help=f"built-in name ({', '.join(builtin_names())}) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                   dest="overrides", help="change one recipe option, e.g. --set prune.epochs=20 "
                   "--set sensitivity.target_sparsity=0.92 (repeatable)")
    add_data_args(p, required=False)
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--finetune-epochs", type=int, metavar="N",
                   help="override every retraining step's epochs (0 skips retraining)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print report.json on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = compress(args.file, args.recipe, args.out, dataset=args.dataset,
                      data_dir=args.data_dir, seed=args.seed,
                      finetune_epochs=args.finetune_epochs, overrides=tuple(args.overrides),
                      quiet=args.quiet)
    if args.json:
        print_json(report)
    else:
        b, c = report["baseline"], report["compressed"]
        print(f"{report['model']} {report['recipe']}: {b['bytes_fp32']:,} B fp32 → "
              f"{c['container_bytes']:,} B model.cnz ({report['compression_ratio']:.1f}×), "
              f"accuracy {b['accuracy']:.4f} → {c['accuracy']:.4f} "
              f"(drop {report['accuracy_drop']:.2f} points); report in {args.out}/report.md",
              file=sys.stderr)
    return 0
