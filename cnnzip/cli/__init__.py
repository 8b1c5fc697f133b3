"""``cnnzip`` command line: one thin module per subcommand, each calling ``cnnzip.api``."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from cnnzip import __version__

# The commands (and through them the API, torch, onnx) are imported when a command runs, not
# for `cnnzip --version`, which answers at once.


def commands() -> tuple:
    from cnnzip.cli import (bench, compress, env, eval as eval_cmd, export, importing,
                            inspect as inspect_cmd, search, train)
    return (train, importing, compress, search, eval_cmd, bench, inspect_cmd, export, env)


def build_parser() -> argparse.ArgumentParser:
    from cnnzip.cli.common import Parser

    parser = Parser(
        prog="cnnzip",
        description="Compress trained convolutional networks into small, fast artifacts.",
        epilog="Run `cnnzip COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"cnnzip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands():
        command.add_parser(sub)
    return parser


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"cnnzip: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 a user error, 130 interrupted)."""
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"cnnzip {__version__}")
        return 0
    from cnnzip.api import CnnzipError, init_distributed

    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line
    init_distributed()  # under torchrun: join its process group (gloo)
    try:
        return int(args.run(args) or 0)
    except CnnzipError as exc:
        print(f"cnnzip {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cnnzip {args.command}: interrupted", file=sys.stderr)
        return 130
