"""``cnnzip env``: versions and machine facts for bug reports."""

from __future__ import annotations

import argparse

from cnnzip import api
from cnnzip.cli.common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print versions for bug reports",
                       description="Print cnnzip's, Python's and the dependencies' versions.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = api.environment()
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key + ':':24} {value}")
    return 0
