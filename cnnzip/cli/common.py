"""Options and output shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cnnzip.data import DATASET_NAMES
from cnnzip.models import ZOO

MODEL_HELP = f"zoo name ({', '.join(ZOO)}) or package.module:factory for your own nn.Module"


def add_data_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required, choices=DATASET_NAMES,
                        help="dataset name" + ("" if required else
                                               " (default: the one recorded in the file)"))
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder holding the dataset files (default: the system location, "
                             "/usr/share/datasets/fashion-mnist for fashion-mnist)")


def print_json(obj: Any) -> None:
    """One JSON object on stdout, nothing else."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
