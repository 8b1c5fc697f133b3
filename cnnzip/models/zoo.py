"""The reference networks by name, and user models by ``package.module:factory``."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.integrity import MAX_PARAMS
from cnnzip.models.alexnet import AlexNet
from cnnzip.models.lenet import LeNet300, LeNet5, LeNet5Caffe
from cnnzip.models.mobilenet import MobileNetV2
from cnnzip.models.resnet import CifarResNet
from cnnzip.models.vgg import VGG16


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its factory and, for the bigger nets, the default width multiplier (chosen so
    the model trains on a 2-core CPU in minutes, not hours)."""

    factory: Callable[..., nn.Module]
    default_width: float | None
    summary: str


ZOO: dict[str, ZooEntry] = {
    "lenet300": ZooEntry(LeNet300, None, "LeNet-300-100 MLP"),
    "lenet5": ZooEntry(LeNet5, None, "LeNet-5, conv 6-16, fc 120-84"),
    "lenet5-caffe": ZooEntry(LeNet5Caffe, None, "Caffe LeNet-5, conv 20-50, fc 500"),
    "alexnet": ZooEntry(AlexNet, 0.5, "AlexNet-style, 5 conv + 3 fc"),
    "vgg16": ZooEntry(VGG16, 0.25, "VGG-16 with BatchNorm"),
    "resnet20": ZooEntry(partial(CifarResNet, 20), 0.5, "CIFAR ResNet-20"),
    "resnet56": ZooEntry(partial(CifarResNet, 56), 0.5, "CIFAR ResNet-56"),
    "mobilenetv2": ZooEntry(MobileNetV2, 0.5, "MobileNetV2, depthwise separable"),
}


FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
TRUST_HINT = ("pass --trust-model-code (trust_code=True in Python) only if you trust where the "
              "file came from")


def _import_from_cwd(module_name: str) -> Any:
    """Import ``module_name`` the way ``python -m`` would: the working directory first on the
    path (the ``cnnzip`` script does not put it there)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _user_factory(target: str, trust_code: bool) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"unknown model {target!r}; choose one of {', '.join(ZOO)} "
                         "or give package.module:factory")
    if not trust_code:
        raise ModelError(f"the architecture is code to import and call, {target!r}; refused "
                         f"(nothing was imported): {TRUST_HINT}")
    if module_name.endswith(".py") or "/" in module_name or module_name.startswith("."):
        stem = Path(module_name).with_suffix("").name if module_name.endswith(".py") \
            else module_name.strip("./")
        raise ModelError(f"model {target!r}: give the module's import name, not a file path: "
                         f"from the folder that holds it, --model {stem}:{attr} (or put that "
                         "folder on PYTHONPATH)")
    try:
        module = _import_from_cwd(module_name)
    except Exception as exc:  # the user's module failing to import is their input error
        raise ModelError(f"cannot import {module_name!r} for model {target!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (model {target!r})")
    return factory


def check_name(name: str, width: float | None) -> None:
    """Refuse a name that is neither a zoo model nor ``package.module:factory``, and a width
    for a zoo model of fixed width."""
    if name not in ZOO and not FACTORY.match(name):
        raise ModelError(f"unknown model {name!r}: neither a zoo name "
                         f"({', '.join(ZOO)}) nor package.module:factory")
    if name in ZOO and ZOO[name].default_width is None and width is not None:
        raise ModelError(f"model {name!r} has a fixed width, the record says {width}")


def build_network(name: str, in_shape: tuple[int, int, int], num_classes: int,
                  width: float | None, *, trust_code: bool = False) -> nn.Module:
    """A freshly initialised reference network, or a user's by its factory.

    A user factory is called with whichever of ``in_shape``, ``num_classes`` and ``width`` its
    signature accepts, so ``def net(num_classes=10)`` and ``def net()`` both work.

    Args:
        trust_code: allow a ``package.module:factory`` name to be imported and called. Pass
            True only for a name the user gave (that is consent), never for one read from a
            file the user did not vouch for.

    Raises:
        ModelError: a factory name without ``trust_code``, a zoo model past the parameter
            limit, or a factory that fails.
    """
    entry = ZOO.get(name)
    kwargs: dict[str, Any] = {"in_shape": in_shape, "num_classes": num_classes}
    if entry is not None:
        if width is not None:
            kwargs["width"] = width
        _check_size(name, entry.factory, kwargs)
        return entry.factory(**kwargs)
    factory = _user_factory(name, trust_code)
    if width is not None:
        kwargs["width"] = width
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if takes_all or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    try:
        model = factory(**kwargs)
    except Exception as exc:  # a user's code: report it as their model's failure
        raise ModelError(f"model factory {name!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    _check_forward(model, name, in_shape, num_classes)
    return model


def _check_forward(model: nn.Module, name: str, in_shape: tuple[int, int, int],
                   num_classes: int) -> None:
    """Run a user's model once on a zero image: cnnzip needs ``forward(images)`` to return one
    tensor of class scores, (N, num_classes)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *in_shape))
    except Exception as exc:  # the user's code: report it as their model's
        raise ModelError(f"model {name!r} fails on one batch of {tuple(in_shape)} images: "
                         f"{type(exc).__name__}: {exc} (cnnzip calls forward(images) with one "
                         "tensor)") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {name!r} returns a {type(out).__name__}, not one tensor of "
                         f"class scores; wrap it so that forward returns the logits alone")
    if tuple(out.shape) != (1, num_classes):
        raise ModelError(f"model {name!r} returns shape {tuple(out.shape)} for one image; "
                         f"cnnzip needs (1, {num_classes}) class scores")


def _check_size(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Count a zoo model's parameters on the meta device (nothing allocated) and refuse one
    past ``MAX_PARAMS`` or one the factory cannot build at all."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in factory(**kwargs).parameters())
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:
        raise ModelError(f"model {name!r} cannot be built with in_shape {kwargs['in_shape']}, "
                         f"width {kwargs.get('width')}, {kwargs['num_classes']} classes "
                         f"({exc})") from None
    if count > MAX_PARAMS:
        raise ModelError(f"model {name!r} at width {kwargs.get('width')} with "
                         f"{kwargs['num_classes']} classes would have {count:,} parameters, over "
                         f"the limit of {MAX_PARAMS:,}")
