"""``cnnzip compress``: apply a recipe and write model.cnz, report.json and report.md."""

from __future__ import annotations

import argparse
import sys

from cnnzip import api
from cnnzip.cli.common import (add_data_args, add_recipe_args, add_trust_arg, count, fraction,
                               non_negative_float, positive_float, print_json)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a trained model with a recipe",
                       description="Compress a trained checkpoint: the recipe's steps (sensitivity "
                                   "scan, pruning, weight sharing, with distillation from the "
                                   "original while retraining), then the entropy-coded .cnz "
                                   "container. Writes OUT/model.cnz, OUT/report.json, "
                                   "OUT/report.md and plots; after every step, the model so "
                                   "far goes to OUT/stages/ (for --resume).")
    add_recipe_args(p)
    p.add_argument("--target-macs", type=fraction, metavar="FRACTION",
                   help="keep at most this fraction of the MACs (0.5: 2× fewer): a recipe with "
                        "a channels or lowrank step meets it by that step's allocation (--set "
                        "channels.target_macs=FRACTION); any other recipe by searching its "
                        "main setting, counting the MACs of non-zero weights")
    p.add_argument("--target-params", type=fraction, metavar="FRACTION",
                   help="or at most this fraction of the parameters (non-zero), the same way")
    p.add_argument("--target-size-kb", type=positive_float, metavar="K",
                   help="a size budget: model.cnz at most K KiB (1,024 bytes); the recipe's "
                        "main setting (overall sparsity, channels kept, or weight bits) is "
                        "searched, probing without retraining, and the least compression that "
                        "fits is kept")
    p.add_argument("--target-latency-us", type=positive_float, metavar="T",
                   help="a latency budget: cnnzip's C of the model (integer, feature maps "
                        "8-bit) at most T µs per image, measured on --latency-target for each "
                        "probe of the recipe's main setting")
    p.add_argument("--latency-target", choices=("host", "cortex-m4"), default="host",
                   help="where --target-latency-us is measured: this machine (gcc, timed), "
                        "or the emulated Cortex-M4 (instructions executed at --clock-mhz)")
    p.add_argument("--clock-mhz", type=positive_float, metavar="MHZ",
                   help="the Cortex-M4's clock, for --latency-target cortex-m4")
    p.add_argument("--max-drop", type=non_negative_float, metavar="POINTS",
                   help="an accuracy budget: at most POINTS of validation accuracy lost; "
                        "alone, the smallest model within it (every probe retrained); with "
                        "--target-size-kb, checked at the size found")
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
                        "saved in OUT/stages/ (the same model.cnz as an uninterrupted run); "
                        "with a recipe changed from some step on, continue after the last "
                        "step saved before it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    asked = (args.target_size_kb, args.max_drop, args.target_macs, args.target_params,
             args.target_latency_us)
    budget = api.Budget(*asked) if any(v is not None for v in asked) else None
    report = api.compress(args.file, args.recipe, args.out, budget=budget,
                          overrides=tuple(args.overrides), dataset=args.dataset,
                          data_dir=args.data_dir, seed=args.seed,
                          finetune_epochs=args.finetune_epochs, trust_code=args.trust_code,
                          quiet=args.quiet, stage_bench=args.stage_bench, resume=args.resume,
                          latency_target=args.latency_target, clock_mhz=args.clock_mhz)
    if api.rank() > 0:  # torchrun: rank 0 reports
        return 0
    if args.json:
        print_json(report)
    else:
        b, c = report["baseline"], report["compressed"]
        print(f"{report['model']} {report['recipe']}: {b['bytes_fp32']:,} B fp32 → "
              f"{c['container_bytes']:,} B model.cnz ({report['compression_ratio']:.1f}×), "
              f"accuracy {b['accuracy']:.4f} → {c['accuracy']:.4f} "
              f"(drop {report['accuracy_drop']:.2f} points); report in {args.out}/report.md",
              file=sys.stderr)
        if "budget" in report:
            g = report["budget"]
            asked = api.Budget(g["size_kb"], g["max_drop"], g["macs"], g["params"],
                               g["latency_us"]).describe()
            how = (f"after {len(g['probes'])} probes" if g["probes"]
                   else "by the step's own allocation")
            print(f"budget ({asked}): {'met' if g['met'] else 'NOT met'} with "
                  f"{g['knob']}={g['value']} {how}", file=sys.stderr)
    return 0
