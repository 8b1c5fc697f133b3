"""Putting a module under a name: the one ``set_module``, and the JSON descriptions that let a
:class:`~cnnzip.surgery.edits.ModuleReplaced` edit rebuild a merged or factorized layer without
pickle."""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from cnnzip.errors import ModelError
from cnnzip.integrity import MAX_PARAMS
from cnnzip.modules.merged import ConvMaxPool, FlatLinear
from cnnzip.surgery.edits import ModuleReplaced


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` under the qualified ``name`` (every change to a model's
    module tree goes through here)."""
    parent, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
    except AttributeError:
        raise ModelError(f"the model has no module {parent!r} (to hold {name!r})") from None
    setattr(owner, attr, module)


def pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


_BOUNDS = {"in": (1, 1 << 16), "out": (1, 1 << 16), "kernel": (1, 64), "stride": (1, 64),
           "padding": (0, 64), "pool_kernel": (1, 64), "pool_stride": (1, 64),
           "groups": (1, 1 << 16)}
MAX_SEQUENCE = 8  # layers in a recorded nn.Sequential (a factorized layer has at most 4)


def _check_fields(desc: dict[str, Any]) -> None:
    """Bounds on a description's sizes (a file's record is hostile), and the parameter count of
    the module it would build, before anything is allocated."""
    for key, (lo, hi) in _BOUNDS.items():
        if key not in desc:
            continue
        value = desc[key]
        values = value if isinstance(value, list) and len(value) == 2 else [value]
        if not all(type(v) is int and lo <= v <= hi for v in values):
            raise ValueError(f"{key} must be an integer or a pair in [{lo}, {hi}], got {value!r}")
    for key in ("bias",):
        if key in desc and type(desc[key]) is not bool:
            raise ValueError(f"{key} must be true or false, got {desc[key]!r}")
    if "negative_slope" in desc:
        slope = desc["negative_slope"]
        if type(slope) not in (int, float) or not math.isfinite(slope):
            raise ValueError(f"negative_slope must be a finite number, got {slope!r}")
    groups = desc.get("groups", 1)
    if groups != 1 and (desc["in"] % groups or desc["out"] % groups):
        raise ValueError(f"groups {groups} must divide in {desc['in']} and out {desc['out']}")
    if "in" in desc and "out" in desc:
        kernel = pair(desc.get("kernel", 1))
        if desc["in"] * desc["out"] * kernel[0] * kernel[1] > MAX_PARAMS:
            raise ValueError(f"the layer would have over {MAX_PARAMS:,} parameters")


def _pool_args(m: nn.Module) -> dict[str, Any]:
    return {"kernel": list(pair(m.kernel_size)),
            "stride": list(pair(m.stride if m.stride is not None else m.kernel_size))}


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {"in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding), "bias": m.bias is not None}


def _conv2d(d: dict[str, Any]) -> nn.Conv2d:
    return nn.Conv2d(int(d["in"]), int(d["out"]), pair(d["kernel"]), pair(d["stride"]),
                     pair(d["padding"]), groups=int(d.get("groups", 1)), bias=bool(d["bias"]))


def _sequential(d: dict[str, Any]) -> nn.Sequential:
    """A sequence of plain layers (a factorized layer); sequences do not nest."""
    layers = d["layers"]
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_SEQUENCE:
        raise ValueError(f"layers must be a list of 1 to {MAX_SEQUENCE} layer descriptions")
    if any(not isinstance(x, dict) or x.get("type") == "Sequential" for x in layers):
        raise ValueError("each of layers must be a layer description, not a sequence")
    return nn.Sequential(*(construct(x) for x in layers))


def _describe_in_sequence(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, nn.Sequential):
        raise ModelError("cannot record a sequence inside a sequence")
    return describe(module)


def _conv_max_pool_args(m: ConvMaxPool) -> dict[str, Any]:
    return {**_conv_args(m), "pool_kernel": list(m.pool_kernel),
            "pool_stride": list(m.pool_stride), "act": describe(m.act) if m.act else None}


def _conv_max_pool(d: dict[str, Any]) -> ConvMaxPool:
    return ConvMaxPool(int(d["in"]), int(d["out"]), pair(d["kernel"]), pair(d["stride"]),
                       pair(d["padding"]), bool(d["bias"]), pair(d["pool_kernel"]),
                       pair(d["pool_stride"]), construct(d["act"]) if d["act"] else None)


_DESCRIBE: dict[type, Callable[[Any], dict[str, Any]]] = {
    nn.Identity: lambda m: {},
    nn.ReLU: lambda m: {},
    nn.ReLU6: lambda m: {},
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope},
    nn.MaxPool2d: _pool_args,
    nn.AvgPool2d: _pool_args,
    nn.Linear: lambda m: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None},
    FlatLinear: lambda m: {"in": m.in_features, "out": m.out_features,
                           "bias": m.bias is not None},
    nn.Conv2d: lambda m: {**_conv_args(m), **({"groups": m.groups} if m.groups != 1 else {})},
    ConvMaxPool: _conv_max_pool_args,
    nn.Sequential: lambda m: {"layers": [_describe_in_sequence(x) for x in m]},
}
_CONSTRUCT: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "Identity": lambda d: nn.Identity(),
    "ReLU": lambda d: nn.ReLU(),
    "ReLU6": lambda d: nn.ReLU6(),
    "LeakyReLU": lambda d: nn.LeakyReLU(float(d["negative_slope"])),
    "MaxPool2d": lambda d: nn.MaxPool2d(pair(d["kernel"]), pair(d["stride"])),
    "AvgPool2d": lambda d: nn.AvgPool2d(pair(d["kernel"]), pair(d["stride"])),
    "Linear": lambda d: nn.Linear(int(d["in"]), int(d["out"]), bias=bool(d["bias"])),
    "FlatLinear": lambda d: FlatLinear(int(d["in"]), int(d["out"]), bias=bool(d["bias"])),
    "Conv2d": _conv2d,
    "Sequential": _sequential,
    "ConvMaxPool": _conv_max_pool,
}


def describe(module: nn.Module) -> dict[str, Any]:
    """The JSON description that :func:`construct` turns back into an equal (untrained) module."""
    try:
        return {"type": type(module).__name__, **_DESCRIBE[type(module)](module)}
    except KeyError:
        raise ModelError(f"cannot record a {type(module).__name__} in a compressed "
                         "architecture") from None


def construct(desc: dict[str, Any]) -> nn.Module:
    """The module a :func:`describe` record stands for (the record's fields checked first)."""
    try:
        if not isinstance(desc, dict):
            raise TypeError("a layer description must be an object")
        _check_fields(desc)
        if desc.get("act") is not None and not isinstance(desc["act"], dict):
            raise TypeError("act must be an object or null")
        return _CONSTRUCT[desc["type"]](desc)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        text = repr(desc)
        text = text if len(text) <= 120 else text[:117] + "..."
        raise ModelError(f"malformed layer description {text} ({exc})") from None


def replace(model: nn.Module, name: str, module: nn.Module) -> ModuleReplaced:
    """Put ``module`` under ``name``; returns its :class:`ModuleReplaced` edit."""
    set_module(model, name, module)
    return ModuleReplaced(name, describe(module))
