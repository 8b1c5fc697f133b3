"""``cnnzip search``: trials of a recipe's main setting on an Optuna study shared by workers."""

from __future__ import annotations

import argparse
import sys

from cnnzip import api
from cnnzip.cli.common import add_data_args, add_recipe_args, count, positive_int, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a recipe's main setting over size and accuracy "
                                      "with parallel workers (Optuna)",
                       description="Run trials of a recipe with its main setting (the overall "
                                   "sparsity, channels kept or weight bits) proposed by "
                                   "Optuna's multi-objective TPE sampler: each trial's "
                                   "model.cnz bytes and validation accuracy go to a study in "
                                   "--storage, which other workers, on this machine "
                                   "(--workers) or others (the same command and storage), "
                                   "share; a killed search continues from it. Writes "
                                   "OUT/search.json, OUT/search.png (the Pareto front) and "
                                   "OUT/report.md; each trial's files in OUT/trials/.")
    add_recipe_args(p)
    p.add_argument("--storage", required=True, metavar="URL",
                   help="where the study lives: sqlite:///study.db, postgresql://…, or "
                        "journal:FILE (a file on shared storage)")
    p.add_argument("--study", default="cnnzip", help="the study's name (default cnnzip)")
    p.add_argument("--trials", type=positive_int, default=8,
                   help="trials in the study in all, across every worker (default 8)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="local worker processes, one thread each (default 1)")
    p.add_argument("--finetune-epochs", type=count, default=0, metavar="N",
                   help="retraining epochs of each trial (default 0: none)")
    p.add_argument("--seed", type=count, default=0)
    add_data_args(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print search.json on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = api.SearchConfig(args.file, args.recipe, args.out, args.storage, args.study,
                              args.trials, args.workers, args.seed, args.finetune_epochs,
                              tuple(args.overrides), args.dataset,
                              str(args.data_dir) if args.data_dir else None)
    result = api.run_search(config)
    if args.json:
        print_json(result)
        return 0
    print(f"{len(result['trials'])} trials in study {args.study!r} ({result['trials_this_run']} "
          f"run here by {args.workers} worker(s) in {result['wall_seconds']:.1f} s); Pareto "
          f"front in {args.out}/report.md and search.png:", file=sys.stderr)
    front = [t for t in result["trials"] if t["number"] in result["pareto_front"]]
    for t in sorted(front, key=lambda t: t["bytes"]):
        print(f"  {result['knob']}={t['value']}: {t['bytes']:,} B, validation "
              f"{t['val_accuracy']:.4f}, test {t['test_accuracy']:.4f}", file=sys.stderr)
    return 0
