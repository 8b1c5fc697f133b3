"""``cnnzip train``: fit a zoo or user model from scratch and save a safetensors checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys

from cnnzip import api
from cnnzip.cli.common import (MODEL_HELP, add_data_args, count, non_negative_float,
                               positive_float, positive_int, print_json)

_D = api.TrainConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="Train a model from scratch (SGD, one-cycle schedule, "
                                   "translation and flip augmentation), report validation and "
                                   "test accuracy, and save a .safetensors checkpoint with the "
                                   "architecture in its metadata. --epochs 0 saves the "
                                   "untrained model.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_data_args(p)
    p.add_argument("--width", type=positive_float,
                   help="width multiplier for alexnet, vgg16, resnet*, mobilenetv2 "
                        "(default: the zoo's)")
    p.add_argument("--epochs", type=count, default=_D.epochs, help=f"default {_D.epochs}")
    p.add_argument("--batch-size", type=positive_int, default=_D.batch_size,
                   help=f"default {_D.batch_size}")
    p.add_argument("--lr", type=positive_float, default=_D.lr,
                   help=f"peak learning rate, default {_D.lr}")
    p.add_argument("--weight-decay", type=non_negative_float, default=_D.weight_decay,
                   help=f"default {_D.weight_decay}")
    p.add_argument("--augment-pad", type=count, default=_D.augment_pad,
                   help=f"random translation in pixels, 0 for none (default {_D.augment_pad})")
    p.add_argument("--slimming", type=non_negative_float, default=_D.slimming, metavar="LAMBDA",
                   help="L1 penalty on BatchNorm scales (network slimming), so that a later "
                        "channel-prune with criterion bn finds unimportant channels; 1e-4 to "
                        f"1e-3 is typical (default {_D.slimming})")
    p.add_argument("--clip-norm", type=non_negative_float, default=_D.clip_norm, metavar="NORM",
                   help="scale each step's gradients down to at most this L2 norm, 0 for never "
                        f"(default {_D.clip_norm}: keeps models without BatchNorm from "
                        "diverging at the peak rate)")
    p.add_argument("--val-size", type=val_size, metavar="N|FRACTION",
                   help="training images held out for validation: a count, or a fraction "
                        "below 1 (default 5,000 for the named datasets, a tenth of your own)")
    p.add_argument("--seed", type=count, default=_D.seed, help=f"default {_D.seed}")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def val_size(text: str) -> int | float:
    """A count of images (an integer) or a fraction in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count nor a fraction") from None
    if value.is_integer() and value >= 1:
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"{text!r}: give a count of images or a fraction in (0, 1)")


def run(args: argparse.Namespace) -> int:
    config = api.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, augment_pad=args.augment_pad,
                         seed=args.seed, slimming=args.slimming,
                         clip_norm=args.clip_norm)
    command = "cnnzip " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    summary = api.train_baseline(args.model, args.dataset, args.out, data_dir=args.data_dir,
                                 width=args.width, config=config, quiet=args.quiet,
                                 command=command, val_size=args.val_size)
    if api.rank() > 0:  # torchrun: rank 0 reports
        return 0
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['model']} on {summary['dataset']}: test accuracy "
              f"{summary['test_accuracy']:.4f}, validation {summary['val_accuracy']:.4f}, "
              f"{summary['epochs']} epochs in {summary['train_seconds']:.0f} s → {args.out}",
              file=sys.stderr)
    return 0
