"""``cnnzip compress``: apply a recipe and write model.cnz, report.json and report.md."""

from __future__ import annotations

import argparse
import sys

from cnnzip.cli.common import add_data_args, add_trust_arg, count, fraction, print_json
from cnnzip.errors import CnnzipError
from cnnzip.pipeline import compress
from cnnzip.recipes import builtin_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a trained model with a recipe",
                       description="Compress a trained checkpoint: the recipe's steps (sensitivity "
                                   "scan, pruning, weight sharing, with distillation from the "
                                   "original while retraining), then the entropy-coded .cnz "
                                   "container. Writes OUT/model.cnz, OUT/report.json, "
                                   "OUT/report.md and plots; after every step, the model so "
                                   "far goes to OUT/stages/ (for --resume).")
    p.add_argument("file", metavar="FILE.safetensors", help="a checkpoint from `cnnzip train`")
    p.add_argument("--recipe", required=True,
                   help=f"built-in name ({', '.join(builtin_names())}) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                   dest="overrides", help="change one recipe option, e.g. --set prune.epochs=20 "
                   "--set sensitivity.target_sparsity=0.92 (repeatable)")
    p.add_argument("--target-macs", type=fraction, metavar="FRACTION",
                   help="structured pruning budget: keep at most this fraction of the MACs "
                        "(0.5: 2× fewer); the same as --set channels.target_macs=FRACTION")
    p.add_argument("--target-params", type=fraction, metavar="FRACTION",
                   help="or keep at most this fraction of the parameters "
                        "(--set channels.target_params=FRACTION)")
    add_data_args(p, required=False)
    p.add_argument("--seed", type=count, default=0,
                   help="seeds clustering and retraining (default 0); the validation split is "
                        "always the one the checkpoint was trained with")
    add_trust_arg(p)
    p.add_argument("--finetune-epochs", type=count, metavar="N",
                   help="override every retraining step's epochs (0 skips retraining)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print report.json on stdout")
    p.add_argument("--no-stage-bench", dest="stage_bench", action="store_false",
                   help="skip timing each stage's model against the original (sizes and "
                        "accuracies are still measured)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from the last step "
                        "saved in OUT/stages/ (the same model.cnz as an uninterrupted run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def budget_overrides(target_macs: float | None, target_params: float | None) -> list[str]:
    """``--target-macs`` / ``--target-params`` as channels-step overrides (the other is
    cleared, so a flag replaces the recipe's budget rather than conflicting with it)."""
    if target_macs is not None and target_params is not None:
        raise CnnzipError("give --target-macs or --target-params, not both")
    if target_macs is not None:
        return [f"channels.target_macs={target_macs}", "channels.target_params=null"]
    if target_params is not None:
        return [f"channels.target_params={target_params}", "channels.target_macs=null"]
    return []


def run(args: argparse.Namespace) -> int:
    overrides = (*args.overrides, *budget_overrides(args.target_macs, args.target_params))
    report = compress(args.file, args.recipe, args.out, dataset=args.dataset,
                      data_dir=args.data_dir, seed=args.seed,
                      finetune_epochs=args.finetune_epochs, overrides=overrides,
                      quiet=args.quiet, trust_code=args.trust_code,
                      stage_bench=args.stage_bench, resume=args.resume)
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
