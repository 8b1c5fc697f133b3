"""``cnnzip eval``: test-set accuracy of a model file."""

from __future__ import annotations

import argparse
import sys

from cnnzip import api
from cnnzip.cli.common import add_data_args, add_trust_arg, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test-set accuracy of a model file",
                       description="Evaluate a model file on the full test set of a dataset.")
    p.add_argument("file", metavar="FILE",
                   help="a .safetensors checkpoint or .cnz container written by cnnzip")
    add_data_args(p, required=False)
    add_trust_arg(p)
    p.add_argument("--json", action="store_true",
                   help='print {"accuracy", "samples", ...} as JSON on stdout')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = api.evaluate_file(args.file, args.dataset, data_dir=args.data_dir,
                               trust_code=args.trust_code)
    if args.json:
        print_json(result)
    else:
        print(f"{result['file']}: accuracy {result['accuracy']:.4f} on {result['samples']} "
              f"{result['dataset']} test images", file=sys.stdout)
    return 0
