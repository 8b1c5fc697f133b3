"""Options and output shared by subcommands."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, NoReturn

from cnnzip.api import DATASET_NAMES, ZOO, recipe_names

MODEL_HELP = f"zoo name ({', '.join(ZOO)}) or package.module:factory for your own nn.Module"


def dataset_name(text: str) -> str:
    """A ``--dataset`` value: a named dataset, or your own as npz:FILE or folder:DIR."""
    if text in DATASET_NAMES or text.startswith(("npz:", "folder:")):
        return text
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; choose one of "
                                     f"{', '.join(DATASET_NAMES)}, or npz:FILE or folder:DIR")


DATASET_HELP = (f"{', '.join(DATASET_NAMES)}, or your own: npz:FILE (arrays x_train, y_train, "
                "x_test, y_test; uint8 images N×C×H×W, N×H×W×C or N×H×W, labels 0..K-1) or "
                "folder:DIR (DIR/train/CLASS/*.png and DIR/test/CLASS/*.png)")


def add_data_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required, type=dataset_name, metavar="NAME",
                        help=DATASET_HELP + ("" if required else
                                             " (default: the one recorded in the file)"))
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder holding the dataset files (default: the system location, "
                             "/usr/share/datasets/fashion-mnist for fashion-mnist)")


TRUST_HELP = ("import and call the package.module:factory that a file names as its architecture "
              "(that runs code from the file's say-so: only for files you trust; zoo models "
              "never need it)")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """FILE.safetensors, --recipe and --set, as compress and search take them."""
    parser.add_argument("file", metavar="FILE.safetensors",
                        help="a checkpoint from `cnnzip train`")
    parser.add_argument("--recipe", required=True,
                        help=f"built-in name ({', '.join(recipe_names())}) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                        dest="overrides", help="change one recipe option, e.g. --set "
                        "prune.epochs=20 --set sensitivity.target_sparsity=0.92 (repeatable)")


def add_trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-model-code", action="store_true", dest="trust_code",
                        help=TRUST_HELP)


def _bounded(kind: type, low: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (value >= low and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _bounded(int, 1, "a whole number ≥ 1")
count = _bounded(int, 0, "a whole number ≥ 0")
positive_float = _bounded(float, 1e-300, "a positive number")
non_negative_float = _bounded(float, 0.0, "a number ≥ 0")


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def print_json(obj: Any) -> None:
    """One JSON object on stdout, nothing else."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
