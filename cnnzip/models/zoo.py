"""The model zoo by name, user models by ``package.module:factory``, and the spec that rebuilds
either from a file's metadata."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable

from torch import nn

from cnnzip.errors import ModelError
from cnnzip.models.alexnet import AlexNet
from cnnzip.models.lenet import LeNet5, LeNet5Caffe, LeNet300
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


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture; stored in file metadata.

    Attributes:
        name: a zoo name or ``package.module:factory``.
        in_shape: input (C, H, W).
        num_classes: outputs of the classifier.
        width: width multiplier for zoo models that take one (None: not applicable).
        channel_plan: channels removed by structured pruning, replayed on the freshly built
            architecture in order: (root layer name, True for output channels, indices).
        folded: (layer, BatchNorm) pairs folded after the channel plan: each BatchNorm is an
            identity and its layer has a bias.
        replaced: modules replaced by layer merging, after the folds, in order: (qualified
            name, description of the new module for ``cnnzip.models.replace.construct``).
        quantized: layers wrapped by uniform quantization, last: (qualified name, weight bits,
            input feature-map bits or 0, per channel, output feature-map bits or 0).
    """

    name: str
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    width: float | None = None
    channel_plan: tuple[tuple[str, bool, tuple[int, ...]], ...] = ()
    folded: tuple[tuple[str, str], ...] = ()
    replaced: tuple[tuple[str, dict[str, Any]], ...] = ()
    quantized: tuple[tuple[str, int, int, bool, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        try:
            plan = tuple((str(root), bool(out), tuple(int(i) for i in idxs))
                         for root, out, idxs in data.get("channel_plan") or ())
            folded = tuple((str(layer), str(bn)) for layer, bn in data.get("folded") or ())
            replaced = tuple((str(name), dict(desc)) for name, desc in data.get("replaced") or ())
            quantized = tuple((str(q[0]), int(q[1]), int(q[2]), bool(q[3]), int(q[4]))
                              for q in data.get("quantized") or ())
            return cls(name=str(data["name"]), in_shape=tuple(int(v) for v in data["in_shape"]),
                       num_classes=int(data["num_classes"]),
                       width=None if data.get("width") is None else float(data["width"]),
                       channel_plan=plan, folded=folded, replaced=replaced,
                       quantized=quantized)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed model spec {data!r}: {exc}") from None


def resolve_spec(name: str, in_shape: tuple[int, int, int], num_classes: int,
                 width: float | None = None) -> ModelSpec:
    """Fill in the zoo's default width; reject a width for models that take none."""
    entry = ZOO.get(name)
    if entry is not None:
        if width is not None and entry.default_width is None:
            raise ModelError(f"model {name!r} has a fixed width; drop --width")
        width = entry.default_width if width is None else width
    if width is not None and width <= 0:
        raise ModelError(f"width must be positive, got {width}")
    return ModelSpec(name, tuple(in_shape), num_classes, width)


def _user_factory(target: str) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"unknown model {target!r}; choose one of {', '.join(ZOO)} "
                         "or give package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {target!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (model {target!r})")
    return factory


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised model from its spec, its channel plan, folds, merges and
    quantized layers replayed.

    A user factory is called with whichever of ``in_shape``, ``num_classes`` and ``width`` its
    signature accepts, so ``def net(num_classes=10)`` and ``def net()`` both work.
    """
    model = _build_base(spec)
    if spec.channel_plan:
        _replay(model, spec)
    if spec.folded:
        from cnnzip.models.fold import fold_batchnorm

        try:
            fold_batchnorm(model, spec.folded, weights=False)
        except ModelError as exc:
            raise ModelError(f"model {spec.name!r}: the folded BatchNorms do not fit the "
                             f"architecture ({exc})") from None
    if spec.replaced:
        from cnnzip.models.replace import replay

        try:
            replay(model, spec.replaced)
        except ModelError as exc:
            raise ModelError(f"model {spec.name!r}: the merged layers do not fit the "
                             f"architecture ({exc})") from None
    if spec.quantized:
        _quantize(model, spec)
    return model


def _quantize(model: nn.Module, spec: ModelSpec) -> None:
    from cnnzip.modules.quant import quantize_layer

    for name, weight_bits, act_bits, per_channel, out_bits in spec.quantized:
        try:
            quantize_layer(model, name, weight_bits, act_bits, per_channel=per_channel,
                           out_bits=out_bits)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelError(f"model {spec.name!r}: cannot quantize layer {name!r} ({exc})") \
                from None


def _replay(model: nn.Module, spec: ModelSpec) -> None:
    """Remove the plan's channels again, as structured pruning removed them."""
    from cnnzip.models.channels import prune_channels, trace

    try:
        prune_channels(model, trace(model, spec.in_shape), list(spec.channel_plan))
    except ModelError as exc:
        raise ModelError(f"model {spec.name!r}: the channel plan does not fit the "
                         f"architecture ({exc})") from None


def _build_base(spec: ModelSpec) -> nn.Module:
    entry = ZOO.get(spec.name)
    kwargs: dict[str, Any] = {"in_shape": spec.in_shape, "num_classes": spec.num_classes}
    if entry is not None:
        if spec.width is not None:
            kwargs["width"] = spec.width
        return entry.factory(**kwargs)
    factory = _user_factory(spec.name)
    if spec.width is not None:
        kwargs["width"] = spec.width
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if takes_all or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    try:
        model = factory(**kwargs)
    except Exception as exc:  # a user's code: report it as their model's failure
        raise ModelError(f"model factory {spec.name!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {spec.name!r} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model
