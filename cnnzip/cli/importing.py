"""``cnnzip import``: a model trained elsewhere (its architecture and a state dict) as a cnnzip
checkpoint."""

from __future__ import annotations

import argparse
import sys

from cnnzip import api
from cnnzip.cli.common import MODEL_HELP, add_data_args, positive_float, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="a model trained elsewhere as a cnnzip checkpoint",
                       description="Build MODEL for the dataset's input shape and classes, load "
                                   "the state dict in WEIGHTS into it (a .pt/.pth file written "
                                   "by torch.save(model.state_dict(), ...), read with "
                                   "weights_only=True, or a .safetensors file), evaluate it on "
                                   "the test set, and save a checkpoint that every other "
                                   "command takes, the dataset's normalisation recorded.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("weights", metavar="WEIGHTS", help="the state dict: .pt, .pth or .safetensors")
    add_data_args(p)
    p.add_argument("--width", type=positive_float, help="width multiplier of a zoo model")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = api.import_model(args.model, args.weights, args.dataset, args.out,
                               data_dir=args.data_dir, width=args.width)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['model']} from {args.weights} on {summary['dataset']}: test accuracy "
              f"{summary['test_accuracy']:.4f}, validation {summary['val_accuracy']:.4f} → "
              f"{args.out}", file=sys.stderr)
    return 0
