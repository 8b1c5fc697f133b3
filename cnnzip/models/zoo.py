"""The model zoo by name, user models by ``package.module:factory``, and the spec that rebuilds
either from a file's metadata."""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import asdict, dataclass
from functools import partial
from typing import Annotated, Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.integrity import MAX_PARAMS
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


FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
TRUST_HINT = ("pass --trust-model-code (trust_code=True in Python) only if you trust where the "
              "file came from")

Name = Annotated[str, StringConstraints(max_length=256, pattern=r"^[A-Za-z0-9_.]*$")]
Index = Annotated[StrictInt, Field(ge=0, le=1 << 20)]
Bits = Annotated[StrictInt, Field(ge=0, le=16)]


class SpecSchema(BaseModel):
    """What a file's ``model`` record may hold; checked before anything is built."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(max_length=256)]
    in_shape: tuple[Annotated[StrictInt, Field(ge=1, le=64)],
                    Annotated[StrictInt, Field(ge=1, le=4096)],
                    Annotated[StrictInt, Field(ge=1, le=4096)]]
    num_classes: Annotated[StrictInt, Field(ge=1, le=100_000)]
    width: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False, strict=True)] | None = None
    channel_plan: list[tuple[Name, StrictBool, list[Index]]] = Field(default=[], max_length=10_000)
    folded: list[tuple[Name, Name]] = Field(default=[], max_length=10_000)
    replaced: list[tuple[Name, dict[str, Any]]] = Field(default=[], max_length=10_000)
    quantized: list[tuple[Name, Bits, Bits, StrictBool, Bits]] = Field(default=[],
                                                                         max_length=10_000)


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
    def from_schema(cls, s: SpecSchema) -> "ModelSpec":
        """The spec of a validated ``model`` record (:class:`SpecSchema`)."""
        if s.name not in ZOO and not FACTORY.match(s.name):
            raise ModelError(f"unknown model {s.name!r}: neither a zoo name "
                             f"({', '.join(ZOO)}) nor package.module:factory")
        if s.name in ZOO and ZOO[s.name].default_width is None and s.width is not None:
            raise ModelError(f"model {s.name!r} has a fixed width, the record says {s.width}")
        return cls(name=s.name, in_shape=s.in_shape, num_classes=s.num_classes,
                   width=None if s.width is None else float(s.width),
                   channel_plan=tuple((r, o, tuple(i)) for r, o, i in s.channel_plan),
                   folded=tuple(s.folded), replaced=tuple(s.replaced),
                   quantized=tuple(s.quantized))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        from pydantic import ValidationError

        try:
            return cls.from_schema(SpecSchema.model_validate(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ModelError(f"malformed model spec: field {'.'.join(map(str, err['loc']))}: "
                             f"{err['msg']}") from None


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


def _user_factory(target: str, trust_code: bool) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"unknown model {target!r}; choose one of {', '.join(ZOO)} "
                         "or give package.module:factory")
    if not trust_code:
        raise ModelError(f"the architecture is code to import and call, {target!r}; refused "
                         f"(nothing was imported): {TRUST_HINT}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {target!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (model {target!r})")
    return factory


def build_model(spec: ModelSpec, *, trust_code: bool = False) -> nn.Module:
    """Build a freshly initialised model from its spec, its channel plan, folds, merges and
    quantized layers replayed.

    A user factory is called with whichever of ``in_shape``, ``num_classes`` and ``width`` its
    signature accepts, so ``def net(num_classes=10)`` and ``def net()`` both work.

    Args:
        spec: the architecture.
        trust_code: allow a ``package.module:factory`` name to be imported and called. Pass
            True only for a name the user gave (that is consent), never for one read from a
            file the user did not vouch for.

    Raises:
        ModelError: a factory name without ``trust_code``, a zoo model past the parameter
            limit, or a record that does not fit the architecture.
    """
    model = _build_base(spec, trust_code)
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


def _build_base(spec: ModelSpec, trust_code: bool) -> nn.Module:
    entry = ZOO.get(spec.name)
    kwargs: dict[str, Any] = {"in_shape": spec.in_shape, "num_classes": spec.num_classes}
    if entry is not None:
        if spec.width is not None:
            kwargs["width"] = spec.width
        _check_size(spec, entry.factory, kwargs)
        return entry.factory(**kwargs)
    factory = _user_factory(spec.name, trust_code)
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


def _check_size(spec: ModelSpec, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Count a zoo model's parameters on the meta device (nothing allocated) and refuse one
    past ``MAX_PARAMS`` or one the factory cannot build at all."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in factory(**kwargs).parameters())
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:
        raise ModelError(f"model {spec.name!r} cannot be built with in_shape {spec.in_shape}, "
                         f"width {spec.width}, {spec.num_classes} classes ({exc})") from None
    if count > MAX_PARAMS:
        raise ModelError(f"model {spec.name!r} at width {spec.width} with {spec.num_classes} "
                         f"classes would have {count:,} parameters, over the limit of "
                         f"{MAX_PARAMS:,}")
